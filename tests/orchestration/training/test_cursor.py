from orchestration.training.cursor import DataCursor


def test_epochs_visit_every_pair_once_in_a_seeded_order():
    cur = DataCursor(size=10, seed=3)
    first = cur.next_batch(4) + cur.next_batch(4) + cur.next_batch(2)
    assert sorted(first) == list(range(10)) and cur.epoch == 1 and cur.position == 0
    second = cur.next_batch(10)
    assert sorted(second) == list(range(10)) and second != first
    assert DataCursor(size=10, seed=4).next_batch(10) != first


def test_resumed_cursor_draws_the_same_batches():
    a = DataCursor(size=7, seed=0)
    a.next_batch(3)
    a.next_batch(3)
    saved = a.state()
    expected = [a.next_batch(3) for _ in range(4)]
    b = DataCursor.from_state(saved)
    assert [b.next_batch(3) for _ in range(4)] == expected
