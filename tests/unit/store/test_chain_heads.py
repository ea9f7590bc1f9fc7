"""What a node knows of audit chain heads: a hint offered only whole, forgotten on a miss,
and held back for longer after each miss in a row."""

from __future__ import annotations

from saga_orchestrator.store.chain_heads import ChainHeads

A, B = (3, "a" * 64), (7, "b" * 64)


def test_a_batch_gets_heads_only_when_every_tenant_s_is_known() -> None:
    heads = ChainHeads()
    assert heads.known(["t1"]) is None
    heads.learned({"t1": A})
    assert heads.known(["t1"]) == {"t1": A}
    assert heads.known(["t1", "t2"]) is None
    heads.learned({"t2": B})
    assert heads.known(["t1", "t2"]) == {"t1": A, "t2": B}


def test_nothing_audited_needs_no_head() -> None:
    assert ChainHeads().known([]) == {}


def test_a_miss_forgets_and_sits_out_twice_as_long_each_time_in_a_row() -> None:
    heads = ChainHeads()
    heads.learned({"t1": A})
    sat_out = []
    for _ in range(3):
        heads.missed(["t1"])
        assert heads.known(["t1"]) is None  # forgotten until a locked write teaches it
        heads.learned({"t1": A})
        skipped = 0
        while heads.known(["t1"]) is None:
            skipped += 1
        sat_out.append(skipped)
    assert sat_out == [2, 4, 8]


def test_a_confirmed_write_ends_the_misses() -> None:
    heads = ChainHeads()
    heads.learned({"t1": A})
    heads.missed(["t1"])
    heads.learned({"t1": A})
    while heads.known(["t1"]) is None:
        pass
    heads.confirmed({"t1": B})
    heads.missed(["t1"])
    heads.learned({"t1": B})
    assert [heads.known(["t1"]) for _ in range(3)] == [None, None, {"t1": B}]  # 2 again


def test_a_batch_with_a_tenant_sitting_out_counts_for_every_one_of_them() -> None:
    heads = ChainHeads()
    for tenant in ("t1", "t2"):
        heads.learned({tenant: A})
        heads.missed([tenant])
        heads.learned({tenant: A})
    assert heads.known(["t1", "t2"]) is None
    assert heads.known(["t1", "t2"]) is None
    assert heads.known(["t1", "t2"]) == {"t1": A, "t2": A}


def test_sitting_out_is_bounded() -> None:
    heads = ChainHeads()
    for _ in range(40):
        heads.missed(["t1"])
    heads.learned({"t1": A})
    skipped = 0
    while heads.known(["t1"]) is None:
        skipped += 1
    assert skipped == 1024


def test_the_tenant_first_learned_longest_ago_is_forgotten_at_capacity() -> None:
    heads = ChainHeads(capacity=2)
    heads.learned({"t1": A, "t2": A})
    heads.learned({"t1": B})  # already known: nothing forgotten
    heads.learned({"t3": B})
    assert heads.known(["t1"]) is None
    assert heads.known(["t2", "t3"]) == {"t2": A, "t3": B}
