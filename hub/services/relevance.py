"""A page of a search in relevance order, read one score level at a time.

Ranking every match costs as much as the matches (scoring and sorting 15,000 of them for
two common words), while a page needs only its first rows. The totals a search can score
are few (two words: 8, 6, 5, 4, 3, 2; `search.levels`), and within a level the order is
downloads then id, the order of an index. So, from the cursor's level down, until the
page has its rows, each level is read one of two ways:
- walked: the adapters in the downloads order, each row's level checked, over a stretch
  of WINDOW_PER_ROW adapters per row wanted. A level holding at least about one adapter
  in WINDOW_PER_ROW fills the page in that stretch, reading only the rows up to its last;
- when the walk falls short, fetched whole through the full-text index, which can tell
  the fields apart (that level is sparse: few rows to sort).
The walk comes first because it is the cheap way for the levels a page usually comes
from, and because asking the index how big a level is costs about as much as the walk
(on PostgreSQL, GIN reads the whole posting list of a prefix before counting any of it).
Every way gives exactly the rows of the full ranking, in its order. A search with few
matches, or with more words than search.MAX_LEVEL_WORDS, is ranked whole in one statement
instead (`ranked_keys` says None): a level-by-level look would cost it more.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from hub.models import Adapter
from hub.services import search
from hub.services.search import Terms

#: A search with fewer matches is ranked whole, once a level has to be fetched whole.
FEW_MATCHES = 1000
#: How many adapters, in the downloads order, a walk reads per row it wants at most.
WINDOW_PER_ROW = 100

Key = tuple[int, int, int]


def ranked_keys(session: Session, narrow: Callable[[Select], Select], terms: Terms,
                after: list | None, need: int, dialect: str) -> list[Key] | None:
    """The keys (score, downloads, id) of the first `need` matches after the cursor
    `after`, in relevance order; None when the search is better ranked whole.

    `narrow` adds the caller's visibility and the query's other filters to a statement
    over adapters.
    """
    if len(terms.words) > search.MAX_LEVEL_WORDS:
        return None
    found: list[Key] = []
    checked_few = False
    for total, ways in search.levels(terms):
        if after is not None and total > after[0]:
            continue
        start = tuple(after[1:]) if after is not None and total == after[0] else None
        want = need - len(found)
        level = _Level(session, narrow, terms, total, start, dialect)
        keys = level.walk(want)
        if keys is None:
            if not checked_few:
                checked_few = True
                matches = search.candidates(terms, dialect).limit(FEW_MATCHES).subquery()
                if session.scalar(select(func.count()).select_from(matches)) < FEW_MATCHES:
                    return None
            keys = level.whole(search.in_level(terms, ways, dialect), want)
        found += keys
        if len(found) >= need:
            break
    return found


class _Level:
    """One score level of a search, from a (downloads, id) start on (None: the top)."""

    def __init__(self, session: Session, narrow, terms: Terms, total: int,
                 start: tuple | None, dialect: str):
        self.session, self.narrow, self.terms, self.total = session, narrow, terms, total
        self.start, self.dialect = start, dialect

    def walk(self, want: int) -> list[Key] | None:
        """The level's first `want` keys if a stretch of WINDOW_PER_ROW * want adapters
        in the downloads order holds them (or all there are, when no more follow);
        else None."""
        window = WINDOW_PER_ROW * want
        if self.dialect == "postgresql":
            return self._walk_window(want, window)
        # Where the stretch ends: found in the index alone (no filter, no row read). The
        # walk is then one index range, read in order until it has `want` rows.
        end = self._after_start(select(Adapter.downloads, Adapter.id))
        end = self.session.execute(
            end.order_by(Adapter.downloads.desc(), Adapter.id.desc())
            .offset(window - 1).limit(1)).first()
        page = self.narrow(select(Adapter.downloads, Adapter.id)
                           .where(search.at_level(self.terms, self.total)))
        page = self._after_start(page)
        if end is not None:
            page = page.where(tuple_(Adapter.downloads, Adapter.id) >= tuple_(*end))
        keys = self._keys(page, want)
        return keys if len(keys) == want or end is None else None

    def _walk_window(self, want: int, window: int) -> list[Key] | None:
        # PostgreSQL's planner cannot know how dense a level is: over a bounded range it
        # reads every row of the range (bitmap) and sorts them. A window it must take in
        # order (ORDER BY, LIMIT) is read along the index and stops at the page's last row.
        stretch = self._after_start(self.narrow(select(
            Adapter.downloads, Adapter.id, Adapter.search_name, Adapter.search_tags,
            Adapter.search_text)))
        stretch = stretch.order_by(Adapter.downloads.desc(), Adapter.id.desc())
        stretch = stretch.limit(window).subquery()
        page = (select(stretch.c.downloads, stretch.c.id)
                .where(search.at_level(self.terms, self.total, stretch.c))
                .order_by(stretch.c.downloads.desc(), stretch.c.id.desc()).limit(want))
        keys = [(self.total, downloads, id_) for downloads, id_ in self.session.execute(page)]
        if len(keys) == want:
            return keys
        seen = self.session.scalar(select(func.count()).select_from(stretch))
        return keys if seen < window else None

    def whole(self, in_level, want: int) -> list[Key]:
        """The level's first `want` keys, from every row of it the index finds."""
        return self._keys(self._after_start(self.narrow(
            select(Adapter.downloads, Adapter.id).where(in_level))), want)

    def _keys(self, page: Select, want: int) -> list[Key]:
        page = page.order_by(Adapter.downloads.desc(), Adapter.id.desc()).limit(want)
        return [(self.total, downloads, id_) for downloads, id_ in self.session.execute(page)]

    def _after_start(self, stmt: Select) -> Select:
        if self.start is None:
            return stmt
        # A row value, not `a < x OR (a = x AND id < y)`: an index range starts at it.
        return stmt.where(tuple_(Adapter.downloads, Adapter.id) < tuple_(*self.start))
