"""Moving the champion by hand: promotions stack up, rollbacks walk back down."""

import pytest

from assets.evaluation.promotion import CHALLENGER, promote, rollback
from assets.store.models import kind_root, pointers


def test_successive_rollbacks_walk_back_through_the_champions(home):
    for version in ("A", "B", "C"):
        (kind_root(home, CHALLENGER) / version).mkdir(parents=True)
        promote(home, version)
    assert rollback(home) == ("C", "B")
    assert rollback(home) == ("B", "A")  # not back to C, the one just rolled back from
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(home)
    promote(home, "C")  # a promotion after rollbacks stacks on what is in force
    assert rollback(home) == ("C", "A")
    assert pointers(home, "reranker_champion")["current"] == "A"
