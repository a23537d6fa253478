"""A page of a search in relevance order, read one score level at a time.

Ranking every match costs as much as the matches (scoring and sorting every adapter that
holds two common words), while a page needs only its first rows. The totals a search can score
are few (two words: 8, 6, 5, 4, 3, 2; `search.levels`), and within a level the order is
downloads then id, the order of an index. So, from the cursor's level down, until the
page has its rows, each level is read one of two ways:
- walked: the adapters in the downloads order, each row's level checked, over a stretch
  of WINDOW_PER_ROW adapters per row wanted. A level holding at least about one adapter
  in WINDOW_PER_ROW fills the page in that stretch, reading only the rows up to its last;
  the first tenth of the stretch is a probe, and a level too sparse there for the rest
  to fill the page is not walked further (a rare word costs a short walk);
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

from collections.abc import Callable

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from hub.models import Adapter
from hub.services import search
from hub.services.search import Terms

#: A search with fewer matches is ranked whole, when a walk finds none of a level's rows.
FEW_MATCHES = 1000
#: How many adapters, in the downloads order, a walk reads per row it wants at most...
WINDOW_PER_ROW = 100
#: ... and how many of them first, to tell whether the rest is worth reading.
PROBE_PER_ROW = 10

Key = tuple[int, int, int]
#: Where a walk's stretch ends when no adapter follows it.
_END = object()


def ranked_keys(session: Session, narrow: Callable[[Select], Select], filtered: bool,
                terms: Terms, after: list | None, need: int, dialect: str
                ) -> list[Key] | None:
    """The keys (score, downloads, id) of the first `need` matches after the cursor
    `after`, in relevance order; None when the search is better ranked whole.

    `narrow` adds the caller's visibility and the query's other filters to a statement
    over adapters; `filtered` says whether there are other filters.
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
        level = _Level(session, narrow, filtered, terms, total, ways, start, dialect)
        keys = level.walk(want)
        if keys is None:
            # A walk that found nothing at all may mean a rare search, not a sparse level.
            if not checked_few and not level.seen:
                checked_few = True
                matches = search.candidates(terms, dialect).limit(FEW_MATCHES).subquery()
                if session.scalar(select(func.count()).select_from(matches)) < FEW_MATCHES:
                    return None
            keys = level.whole(want)
        found += keys
        if len(found) >= need:
            break
    return found


class _Level:
    """One score level of a search, from a (downloads, id) start on (None: the top)."""

    def __init__(self, session: Session, narrow, filtered: bool, terms: Terms, total: int,
                 ways, start: tuple | None, dialect: str):
        self.session, self.narrow, self.terms, self.total = session, narrow, terms, total
        self.filtered, self.ways = filtered, ways
        self.start, self.dialect = start, dialect
        self.seen = False  # whether a walk found any row of the level

    def walk(self, want: int) -> list[Key] | None:
        """The level's first `want` keys if the next WINDOW_PER_ROW * want adapters in
        the downloads order hold them (or all there are, when no more follow); else None.

        The first PROBE_PER_ROW * want adapters are a probe: when the rows found there
        say the whole window will not hold `want` of them, the rest is not read.
        """
        probe = min(PROBE_PER_ROW, WINDOW_PER_ROW)
        keys, end = self._stretch(self.start, probe * want, want)
        self.seen = bool(keys)
        if len(keys) == want or end is _END:
            return keys
        if probe == WINDOW_PER_ROW or len(keys) * WINDOW_PER_ROW < want * probe:
            return None
        if end is None:
            end = self._window_end(self.start, probe * want)
            if end is _END:
                return keys
        # With filters, SQLite finds where a stretch ends by reading its rows; past a
        # probe that promises the page, the walk is left to end where the page does.
        rest = None if self.filtered and self.dialect != "postgresql" else (
            (WINDOW_PER_ROW - probe) * want)
        more, end = self._stretch(end, rest, want - len(keys))
        keys += more
        return keys if len(keys) == want or end is _END else None

    def _stretch(self, start: tuple | None, rows: int | None, want: int
                 ) -> tuple[list[Key], object]:
        """The level's first `want` keys among the `rows` adapters after `start` (None:
        all of them; SQLite only), and the key of the last of those adapters: _END when
        fewer follow, None when not looked up (PostgreSQL, where it costs a statement:
        `_window_end`)."""
        order = (Adapter.downloads.desc(), Adapter.id.desc())
        if self.dialect == "postgresql":
            # PostgreSQL's planner cannot know how dense a level is: over a bounded range
            # it reads every row of the range (bitmap) and sorts them. A window it must
            # take in order (ORDER BY, LIMIT) is read along the index, and the outer
            # LIMIT stops it at the level's last wanted row.
            stretch = _after(self.narrow(select(
                Adapter.downloads, Adapter.id, Adapter.search_name, Adapter.search_tags,
                Adapter.search_text)), start).order_by(*order).limit(rows).subquery()
            page = (select(stretch.c.downloads, stretch.c.id)
                    .where(search.at_level(self.terms, self.ways, stretch.c))
                    .order_by(stretch.c.downloads.desc(), stretch.c.id.desc()).limit(want))
            return [(self.total, *row) for row in self.session.execute(page)], None
        # SQLite: where the stretch ends, then one index range, read in order until it has
        # `want` rows. Without filters (but visibility: most adapters are public) the end
        # comes from the index alone, no row read; a filter (an owner, a tag) may leave
        # few of those adapters, so the stretch is then counted in the adapters it keeps.
        ends = select(Adapter.downloads, Adapter.id)
        end = _END if rows is None else self._last(
            _after(self.narrow(ends) if self.filtered else ends, start).order_by(*order), rows)
        page = _after(self.narrow(select(Adapter.downloads, Adapter.id)
                                  .where(search.at_level(self.terms, self.ways))), start)
        if end is not _END:
            page = page.where(tuple_(Adapter.downloads, Adapter.id) >= tuple_(*end))
        return self._keys(page, want), end

    def _window_end(self, start: tuple | None, rows: int):
        """The key of the last adapter of PostgreSQL's window (the filtered `rows`
        after `start`), or _END when fewer follow."""
        window = _after(self.narrow(select(Adapter.downloads, Adapter.id)), start)
        return self._last(window.order_by(Adapter.downloads.desc(), Adapter.id.desc()), rows)

    def _last(self, ordered: Select, rows: int):
        found = self.session.execute(ordered.offset(rows - 1).limit(1)).first()
        return _END if found is None else tuple(found)

    def whole(self, want: int) -> list[Key]:
        """The level's first `want` keys, from every row of it the index finds."""
        in_level = search.in_level(self.terms, self.ways, self.dialect)
        return self._keys(_after(self.narrow(
            select(Adapter.downloads, Adapter.id).where(in_level)), self.start), want)

    def _keys(self, page: Select, want: int) -> list[Key]:
        page = page.order_by(Adapter.downloads.desc(), Adapter.id.desc()).limit(want)
        return [(self.total, downloads, id_) for downloads, id_ in self.session.execute(page)]


def _after(stmt: Select, start: tuple | None) -> Select:
    """`stmt` from the (downloads, id) key `start` on (None: from the top)."""
    if start is None:
        return stmt
    # A row value, not `a < x OR (a = x AND id < y)`: an index range starts at it.
    return stmt.where(tuple_(Adapter.downloads, Adapter.id) < tuple_(*start))
