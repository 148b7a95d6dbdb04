"""One layer's kept keys and values when the heads keep different numbers of tokens: :class:`RaggedKV`.

Head-wise policies (:class:`~attnkit.cache.AdaKV`, :class:`~attnkit.cache.RazorAttention`)
keep ``count[b, h]`` tokens in row ``(b, h)``, a different number per row.
The rows are stored in **pages** of ``page`` slots: a pool of keys
``(P, page, D)``, values ``(P, page, Dv)``, int32 positions ``(P, page)`` and,
when a policy merged tokens, a float32 log-multiplicity per slot. Each page
belongs to one row (``page_row``) and is that row's ``page_index``-th page;
row ``r``'s token ``i`` sits in its page ``i // page`` at slot ``i % page``.
So the memory is

    (pages in the pool) * page * (bytes of a key + a value + 4 [+ 4])  +  2 int64 per page,

the kept tokens, less than a page of room per row, and the pool's spare
pages (at first those ``room`` more tokens per row need): never a full-length buffer or a mask over one. A long row does not
make the short rows pay for its length.

**Decode reads the pages in place** (:meth:`RaggedKV.attend`): the scores of
each page's row's queries against the page's keys are one batched matmul over
the pool, the softmax is normalised per row across its pages (the maxima and
sums reduced by ``page_row``), and the output is one more batched matmul
summed per row. One attention per layer per step, over budget-sized keys,
with no copy of them.

Merged tokens (RazorAttention's compensation token stands for ``n`` dropped
ones) carry ``bias = log n``: attention adds it to their score, so the token
weighs as ``n`` copies of itself.

Appends write each row's new tokens after its last used slot: into the room
of its last page, then into new pages taken from the end of the pool (grown
by ``GROWTH`` times when it runs out: amortised O(1)). Pages are only ever
taken in order, so a value's pages are the pool's first ``pages``: a value
reads ``pool[:pages]``, and slots past its own counts (written by a later
value) are masked by its counts. Writes go in place only when nothing was
written to the pool since this value was made (the value rule of
:class:`~attnkit.cache.store.LayerKV`); otherwise the rows are first copied
into a pool of their own.

``k``, ``v``, ``pos``, ``bias`` read the rows back padded to ``(B, Hkv, M, ...)``,
``M = max(count)``, the padding at position ``PAD`` (a copy: for the
policies' scoring and for tests, not for decoding).
"""
from __future__ import annotations

import torch

from .store import GROWTH

PAD = torch.iinfo(torch.int32).max


def page_size(keep: int) -> int:
    """Slots per page for rows of about ``keep`` tokens: about a 64th of a row (a power of two), 16 to 256 slots."""
    return max(16, min(256, 1 << max(0, (keep // 64).bit_length() - 1)))


def row_counts(store) -> torch.Tensor:
    """``(B, Hkv)`` int64: tokens each row of a layer holds (a :class:`RaggedKV` or a layer whose rows are even)."""
    if getattr(store, "ragged", False):
        return store.count
    B, kv_heads, used = store.pos.shape
    return torch.full((B, kv_heads), used, dtype=torch.int64, device=store.pos.device)


class _Pool:
    """Pages shared by the values derived from one another; ``version`` counts writes."""

    def __init__(self, k, v, pos, bias, page_row, page_index):
        self.k, self.v, self.pos, self.bias = k, v, pos, bias
        self.page_row, self.page_index = page_row, page_index
        self.version = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[0]

    def tensors(self):
        return [t for t in (self.k, self.v, self.pos, self.bias) if t is not None]


class RaggedKV:
    """Rows of different lengths, in pages. ``count (B, Hkv)`` int64: tokens each row keeps."""

    ragged = True

    def __init__(self, pool: _Pool, count: torch.Tensor, pages: int, length: int, prompt: int, used: int,
                 version: int = 0):
        self._pool, self.count, self.pages, self.length, self.prompt = pool, count, pages, length, prompt
        self.used, self._version = used, version  # used: the longest row (the padded read length)
        self.score, self.appended = None, 0  # appended: tokens the last append added

    @staticmethod
    def pack(k, v, pos, count, length: int, prompt: int, room: int, bias=None, page: int | None = None) -> "RaggedKV":
        """Rows ``k (B, Hkv, M, D)``, ``v``, ``pos (B, Hkv, M)`` whose first ``count[b, h]`` slots are kept, in pages
        of ``page`` slots (default :func:`page_size` of the mean row), with room for ``room`` more tokens per row."""
        B, Hkv, M = pos.shape
        device = pos.device
        count = count.to(torch.int64)
        rows = count.flatten()
        if page is None:
            page = page_size(int(rows.sum()) // max(1, rows.numel()))
        per_row = (rows + page - 1) // page  # pages each row fills
        pages = int(per_row.sum())
        spare = int(((rows + room + page - 1) // page - per_row).sum())  # pages for ``room`` more tokens per row
        page_row = torch.repeat_interleave(torch.arange(rows.numel(), device=device), per_row)
        first = torch.cumsum(per_row, 0) - per_row
        page_index = torch.arange(pages, device=device) - first[page_row]
        slot = torch.arange(M, device=device)
        valid = (slot < count[..., None]).flatten(0, 1)  # (R, M)
        dest = ((first[:, None] + slot // page) * page + slot % page)[valid]

        def paged(t, fill):
            if t is None:
                return None
            out = t.new_full(((pages + spare) * page, *t.shape[3:]), fill)
            out[dest] = t.flatten(0, 1)[valid]
            return out.view(pages + spare, page, *t.shape[3:])

        table = lambda t: torch.cat([t, t.new_zeros(spare)])
        pool = _Pool(paged(k, 0), paged(v, 0), paged(pos, PAD), paged(bias, 0.0), table(page_row), table(page_index))
        return RaggedKV(pool, count, pages, length, prompt, int(rows.max()) if rows.numel() else 0)

    @property
    def page(self) -> int:
        return self._pool.k.shape[1]

    # decoding --------------------------------------------------------------
    def attend(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Softmax attention of ``q (B, H, n, D)``, the newest ``n`` tokens, over the kept keys: ``(B, H, n, Dv)``.

        Query ``i`` sits at position ``length - n + i`` and reads the kept keys at positions up to its own;
        a query that reads none gives zeros."""
        B, H, n, D = q.shape
        R, P, page = self.count.numel(), self.pages, self.page
        pool, group = self._pool, H // self.count.shape[1]
        rows = q.reshape(R, group * n, D)  # query head h reads kv head h // group
        row = pool.page_row[:P]
        fill = (self.count.flatten()[row] - pool.page_index[:P] * page).clamp(0, page)  # this value's slots per page
        hidden = torch.arange(page, device=q.device) >= fill[:, None]  # (P, page)
        s = torch.bmm(rows[row], pool.k[:P].transpose(1, 2)) * scale  # (P, group * n, page)
        if pool.bias is not None:
            s = s + pool.bias[:P, None].to(s.dtype)
        if n > 1:
            qpos = torch.arange(self.length - n, self.length, device=q.device).repeat(group)
            s = s.masked_fill(pool.pos[:P, None] > qpos[:, None], float("-inf"))
        s = s.masked_fill(hidden[:, None], float("-inf"))
        top = s.new_full((R, group * n), float("-inf")).scatter_reduce_(0, row[:, None].expand(-1, group * n),
                                                                         s.amax(-1), "amax")
        top = top.masked_fill(top.isneginf(), 0.0)  # a row that reads no key: zeros below
        e = torch.exp(s - top[row][..., None])
        total = e.new_zeros(R, group * n).index_add_(0, row, e.sum(-1))
        out = e.new_zeros(R, group * n, pool.v.shape[-1]).index_add_(0, row, torch.bmm(e, pool.v[:P]))
        out = out / torch.where(total > 0, total, 1.0)[..., None]
        return out.view(B, H, n, -1)

    def storage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool's key and value pages ``(pages, page, D)``, as they are (tensors standing for the layer)."""
        return self._pool.k[: self.pages], self._pool.v[: self.pages]

    # reading back, padded ----------------------------------------------------
    def _slots(self):
        """``(flat slot (B, Hkv, M) in the pool, valid (B, Hkv, M))`` of each row's tokens."""
        pool, page, R = self._pool, self.page, self.count.numel()
        row, index = pool.page_row[: self.pages], pool.page_index[: self.pages]
        table = torch.zeros(R, max(1, -(-self.used // page)), dtype=torch.int64, device=row.device)
        table[row, index] = torch.arange(self.pages, device=row.device)
        slot = torch.arange(self.used, device=row.device)
        valid = slot < self.count[..., None]
        at = table.view(*self.count.shape, -1).gather(-1, (slot // page).expand(*self.count.shape, -1))
        return torch.where(valid, at * page + slot % page, 0), valid

    def _read(self, t, fill):
        if t is None:
            return None
        index, valid = self._slots()
        out = t.flatten(0, 1)[index]
        return out.masked_fill(~(valid if out.ndim == 3 else valid[..., None]), fill)

    @property
    def k(self) -> torch.Tensor:
        return self._read(self._pool.k, 0)

    @property
    def v(self) -> torch.Tensor:
        return self._read(self._pool.v, 0)

    @property
    def pos(self) -> torch.Tensor:
        return self._read(self._pool.pos, PAD)

    @property
    def bias(self):
        """``(B, Hkv, M)`` float32 log-multiplicities, or ``None`` if no token was merged."""
        return self._read(self._pool.bias, 0.0)

    # sizes -------------------------------------------------------------------
    def _slot_bytes(self) -> int:
        return sum(t[0, 0].numel() * t.element_size() for t in self._pool.tensors())

    def nbytes(self) -> int:
        """Bytes of the kept tokens (keys, values, positions, biases) and the page table."""
        return int(self.count.sum()) * self._slot_bytes() + 2 * 8 * self.pages

    def allocated_bytes(self) -> int:
        """Bytes of the pool, spare pages included, and its page table."""
        pool = self._pool
        return pool.capacity * self.page * self._slot_bytes() + 2 * 8 * pool.capacity

    def numel(self) -> int:
        return int(self.count.sum()) * (self._pool.k.shape[-1] + self._pool.v.shape[-1])

    def with_score(self, score) -> "RaggedKV":
        out = RaggedKV(self._pool, self.count, self.pages, self.length, self.prompt, self.used, self._version)
        out.score, out.appended = score, self.appended
        return out

    def check_shape(self, k, v) -> None:
        have = (tuple(self.count.shape), self._pool.k.shape[-1], self._pool.v.shape[-1], self._pool.k.dtype)
        if (tuple(k.shape[:2]), k.shape[3], v.shape[3], k.dtype) != have:
            raise ValueError(f"this cache layer holds (batch, kv_heads) = {have[0]}, head dims {have[1:3]} ({have[3]}); "
                             f"got keys {tuple(k.shape)} and values {tuple(v.shape)} ({k.dtype}): a cache belongs to "
                             "one model, batch and dtype; make a new one")

    # writing -------------------------------------------------------------
    def append(self, k: torch.Tensor, v: torch.Tensor, reserve: int = 0) -> "RaggedKV":
        """The value with ``k``, ``v`` ``(B, Hkv, n, D)`` appended to every row at positions ``length ..``."""
        self.check_shape(k, v)
        n, page, device = k.shape[2], self.page, k.device
        pool = self._pool if self._pool.version == self._version else self._copy()
        count = self.count.flatten()
        have = (count + page - 1) // page
        need = (count + n + page - 1) // page - have  # new pages per row
        new = int(need.sum())
        if self.pages + new > pool.capacity:
            pool = _grown(pool, self.pages, max(self.pages + new, int(GROWTH * pool.capacity)))
        if new:
            owner = torch.repeat_interleave(torch.arange(count.numel(), device=device), need)
            at = slice(self.pages, self.pages + new)
            pool.page_row[at] = owner
            pool.page_index[at] = have[owner] + torch.arange(new, device=device) - (torch.cumsum(need, 0) - need)[owner]
        # row r's slot i lives in page table[r, i // page]: its old last page or one just taken
        first_new = self.pages + torch.cumsum(need, 0) - need
        slot = count[:, None] + torch.arange(n, device=device)  # (R, n)
        j = slot // page
        last = self._last_pages(have)
        at = torch.where(j < have[:, None], last[:, None], first_new[:, None] + j - have[:, None])
        flat = at * page + slot % page
        pool.k.view(-1, *pool.k.shape[2:])[flat] = k.flatten(0, 1)
        pool.v.view(-1, *pool.v.shape[2:])[flat] = v.flatten(0, 1)
        pool.pos.view(-1)[flat] = torch.arange(self.length, self.length + n, device=device, dtype=torch.int32)
        if pool.bias is not None:
            pool.bias.view(-1)[flat] = 0.0
        pool.version += 1
        out = RaggedKV(pool, self.count + n, self.pages + new, self.length + n, self.prompt, self.used + n,
                       pool.version)
        out.appended = n
        return out

    def _last_pages(self, have: torch.Tensor) -> torch.Tensor:
        """``(R,)``: the pool page of each row's last page (0 for a row without pages: never read)."""
        row, index = self._pool.page_row[: self.pages], self._pool.page_index[: self.pages]
        is_last = index == have[row] - 1
        return torch.zeros_like(have).index_put_((row[is_last],), torch.arange(self.pages, device=row.device)[is_last])

    def _copy(self) -> _Pool:
        """A pool of this value's own: its pages copied (an older value continued a second time)."""
        pool = self._pool
        room = max(self.count.numel(), self.pages // 2)
        return _grown(pool, self.pages, self.pages + room)


def _grown(pool: _Pool, pages: int, capacity: int) -> _Pool:
    """A new pool of ``capacity`` pages holding the first ``pages`` of ``pool``."""

    def copy(t, fill):
        if t is None:
            return None
        out = t.new_full((capacity, *t.shape[1:]), fill)
        out[:pages] = t[:pages]
        return out

    return _Pool(copy(pool.k, 0), copy(pool.v, 0), copy(pool.pos, PAD), copy(pool.bias, 0.0),
                 copy(pool.page_row, 0), copy(pool.page_index, 0))
