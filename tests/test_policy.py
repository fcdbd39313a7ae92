"""The provider's security policy is the provider's own, and its query budget outlives a run.

On the silo objects themselves (no Flower, no Ray): a provider is built the way its ClientApp
builds it (``node_settings`` from the run config and its node config) on a fresh ``RecordDict``,
which is what a new run's ``context.state`` is.
"""

import multiprocessing
import warnings

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from tiny import default_params

from conf import load_config
from crypto import CkksKit, CKKSParams, InsecureParametersError, encrypt_queries
from silos.budget import BUDGET_FILE, QueryBudget, QueryBudgetExceeded
from silos.policy import ProviderPolicy
from silos.provider import Provider
from silos.settings import node_settings
from silos.state import put_arrays

D, K = 8, 3
MOVED = ["query_budget", "logit_noise", "max_request_queries", "privacy_bits", "min_security_bits"]


@pytest.fixture(scope="module")
def querier() -> CkksKit:
    return CkksKit.generate(default_params())


def new_run_state() -> RecordDict:
    """A provider's ``context.state`` at the start of a run: nothing but its (re-trained) head."""
    state = RecordDict()
    rng = np.random.default_rng(0)
    put_arrays(state, "provider.head.news", coef=rng.normal(size=(D, K)) / np.sqrt(D),
               intercept=rng.normal(size=K))
    return state


def policy_file(path, text: str):
    path.write_text(text)
    return str(path)


def deployed_bob(tmp_path, policy_text: str, *overrides: str) -> Provider:
    """bob as its SuperNode runs it: the operator's run config, bob's own node config."""
    cfg = load_config([f"run.output_dir={tmp_path / 'operator'}", *overrides])
    node = {"silo": "bob", "policy": policy_file(tmp_path / "policy.yaml", policy_text),
            "state-dir": str(tmp_path / "bob-state")}
    return Provider(node_settings(cfg, node), new_run_state())


def request(kit: CkksKit, n: int = 3, **extra) -> ConfigRecord:
    z = np.random.default_rng(n).uniform(-1, 1, (n, D))
    return ConfigRecord({"querier": "alice", "task": "news", "path": "batched", "n": n,
                         "ciphertexts": encrypt_queries(kit, z, path="batched", n_classes=K),
                         "context": kit.public_bytes([]), **extra})


# -- (a) the budget is on the provider's disk, per querier, across runs ------------------------------
def test_the_budget_is_still_spent_in_the_next_run(tmp_path, querier):
    first = deployed_bob(tmp_path, "query_budget: 4096\n")  # one batched group at N=8192
    assert first.evaluate(request(querier))["budget_left"] == 0
    second = deployed_bob(tmp_path, "query_budget: 4096\n")  # a new run: a fresh context.state
    assert len(second.state) == 1  # the head only: nothing of the first run's state
    with pytest.raises(QueryBudgetExceeded, match="used 4096 of its 4096"):
        second.evaluate(request(querier))
    assert (tmp_path / "bob-state" / BUDGET_FILE).is_file()
    # Another querier name has its own count (what the coordinator names it: docs/security.md).
    assert second.evaluate(request(querier, querier="dave"))["charged"] == 4096


def test_a_simulated_provider_keeps_its_budget_in_its_workdir_across_runs(tmp_path, querier):
    cfg = load_config([f"run.output_dir={tmp_path}", "silos.bob.policy.query_budget=4096"])
    node = {"partition-id": 1, "num-partitions": 3}
    bob = Provider(node_settings(cfg, node), new_run_state())
    assert bob.settings.state_dir == tmp_path / "silos" / "bob"
    assert bob.evaluate(request(querier))["budget_left"] == 0
    with pytest.raises(QueryBudgetExceeded):
        Provider(node_settings(cfg, node), new_run_state()).evaluate(request(querier))


def test_an_unreadable_budget_file_is_refused_not_reset(tmp_path):
    (tmp_path / BUDGET_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        QueryBudget(tmp_path, 10).check("alice", 1)
    (tmp_path / BUDGET_FILE).write_text('{"used": {"alice": 3}}')  # no format tag
    with pytest.raises(ValueError, match="unreadable"):
        QueryBudget(tmp_path, None).charge("alice", 1)


def _spend(state_dir: str, limit: int, tries: int, start, results) -> None:
    start.wait()
    answered = 0
    for _ in range(tries):
        try:
            QueryBudget(state_dir, limit).charge("alice", 1)
            answered += 1
        except QueryBudgetExceeded:
            pass
    results.put(answered)


def test_two_processes_never_spend_more_than_the_budget_between_them(tmp_path):
    """Two ClientApp processes charging at once: no lost update, no overspend (the lock file)."""
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_spend, args=(str(tmp_path), 60, 40, start, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    answered = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sum(answered) == 60 and min(answered) > 0
    assert QueryBudget(tmp_path, 60).used("alice") == 60


# -- (b) the provider's security floor, whatever the querier and the operator say ---------------------
def test_a_provider_refuses_a_240_bit_chain_at_n8192_whatever_allow_insecure_says(tmp_path):
    insecure = ["he.coeff_mod_bit_sizes=[60,60,60,60]", "he.allow_insecure=true"]  # the operator's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weak = CkksKit.generate(CKKSParams.from_config(load_config(insecure).he))  # the querier's
    assert weak.params.allow_insecure and not weak.params.is_secure
    bob = deployed_bob(tmp_path, "query_budget: 100000\n", *insecure)
    assert bob.settings.he.allow_insecure  # the run config says so; the provider's policy does not
    with pytest.raises(InsecureParametersError, match="whatever allow_insecure says"):
        bob.evaluate(request(weak))
    put_arrays(bob.state, "provider.public", fit=np.zeros((4, D)), val=np.zeros((0, D)))
    with pytest.raises(InsecureParametersError):
        bob.cross_products(ConfigRecord({"querier": "alice", "context": weak.public_bytes([]),
                                         "d_in": D + 1, "fit": [b""]}))
    assert not (bob.settings.state_dir / BUDGET_FILE).exists()  # nothing charged
    assert "provider.contexts" not in bob.state  # nor kept


def test_the_providers_floor_is_its_policys(tmp_path, querier):
    """N=8192 at 128 bits passes the default floor; a provider whose policy asks 192 refuses it."""
    assert deployed_bob(tmp_path, "{}\n").evaluate(request(querier))["charged"] == 4096
    strict = deployed_bob(tmp_path, "min_security_bits: 192\n")
    with pytest.raises(InsecureParametersError, match="192-bit"):
        strict.evaluate(request(querier))


# -- (c) the operator's run config cannot set the provider's limits ----------------------------------
@pytest.mark.parametrize("key", MOVED)
def test_the_old_serve_keys_are_unknown_and_say_where_they_live_now(key):
    with pytest.raises(KeyError, match=rf"unknown config key serve\.{key}:.*policy file.*"
                                       rf"silos\.<provider>\.policy\.{key}"):
        load_config([f"serve.{key}=1"])


def test_the_run_config_cannot_change_the_policy_defaults_nor_a_deployed_providers_policy(tmp_path):
    with pytest.raises(KeyError, match=r"provider_policy\.query_budget"):
        load_config(["provider_policy.query_budget=1"])
    cfg = load_config()
    cfg.provider_policy.query_budget = 1  # even a run config built around load_config
    cfg.provider_policy.allow_cosine = True
    own = node_settings(cfg, {"silo": "bob"}).policy
    assert own.query_budget is None and own.allow_cosine is False  # the file's defaults
    operator = load_config(["silos.bob.policy.query_budget=1000000"])
    with pytest.raises(PermissionError, match=r"silos\.bob\.policy"):
        node_settings(operator, {"silo": "bob", "state-dir": str(tmp_path)})
    assert node_settings(operator, {"partition-id": 1}).policy.query_budget == 1000000  # simulated


# -- (d) the policy file a deployed provider's node config names ---------------------------------------
def test_the_policy_file_is_read_from_the_node_config(tmp_path):
    bob = deployed_bob(tmp_path, "query_budget: 10\nlogit_noise: 0.5\nallow_cosine: true\n"
                                 "min_security_bits: 192\n")
    defaults = ProviderPolicy.resolve()
    assert bob.settings.policy == ProviderPolicy(
        query_budget=10, logit_noise=0.5, allow_cosine=True, min_security_bits=192,
        max_request_queries=defaults.max_request_queries, privacy_bits=defaults.privacy_bits)
    assert bob.settings.state_dir == tmp_path / "bob-state"
    assert deployed_bob(tmp_path, "").settings.policy == defaults  # an empty file: the defaults


@pytest.mark.parametrize(("text", "key"), [
    ("query_budget: -1", "query_budget"),
    ("query_budget: 1.5", "query_budget"),
    ("max_request_queries: 0", "max_request_queries"),
    ("logit_noise: a lot", "logit_noise"),
    ("logit_noise: .nan", "logit_noise"),
    ("privacy_bits: 30", "privacy_bits"),
    ("min_security_bits: 100", "min_security_bits"),
    ("min_security_bits: 127", "min_security_bits"),
    ("allow_cosine: 'no'", "allow_cosine"),
])
def test_a_bad_policy_value_is_an_error_naming_the_key_and_the_file(tmp_path, text, key):
    with pytest.raises(ValueError, match=rf"policy file .*policy\.yaml: {key}"):
        deployed_bob(tmp_path, text + "\n")


def test_a_bad_policy_file_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="quer_budget"):
        deployed_bob(tmp_path, "quer_budget: 5\n")
    with pytest.raises(ValueError, match="mapping"):
        deployed_bob(tmp_path, "- 5\n")
    cfg = load_config()
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml"):
        node_settings(cfg, {"silo": "bob", "policy": str(tmp_path / "nowhere.yaml")})
    with pytest.raises(KeyError, match="querier"):  # only a provider has a policy
        node_settings(cfg, {"silo": "alice", "policy": policy_file(tmp_path / "p.yaml", "{}")})
    with pytest.raises(KeyError, match="querier"):
        node_settings(load_config(["silos.alice.policy.query_budget=1"]), {"partition-id": 0})


def test_a_deployed_budget_needs_a_folder_of_the_providers_own(tmp_path):
    """Else its workdir is the operator's run.output_dir, which could move the budget (reset it)."""
    cfg = load_config()
    node = {"silo": "bob", "policy": policy_file(tmp_path / "p.yaml", "query_budget: 5\n")}
    with pytest.raises(ValueError, match="state-dir"):
        node_settings(cfg, node)
    assert node_settings(cfg, {**node, "output-dir": str(tmp_path)}).state_dir == (
        tmp_path / "silos" / "bob")


# -- (e) the optional cosine round ----------------------------------------------------------------------
def test_the_cosine_round_is_refused_unless_the_policy_allows_it(tmp_path):
    rows = ConfigRecord({"querier": "alice", "d_in": D + 1, "rows": [b"never read"]})
    for text, allowed in (("{}", False), ("allow_cosine: false", False), ("allow_cosine: true", True)):
        bob = deployed_bob(tmp_path, text + "\n")
        put_arrays(bob.state, "provider.public", fit=np.zeros((4, D)), val=np.ones((2, D)))
        if allowed:  # past the policy: it goes on to look for alice's context
            with pytest.raises(LookupError, match="no public context"):
                bob.cosine_products(rows)
        else:
            with pytest.raises(PermissionError, match="allow_cosine"):
                bob.cosine_products(rows)
