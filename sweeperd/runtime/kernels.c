/* sweeperd's compiled loops: the plain case of a batch sweep and of freeSpan, one pass each.
 *
 * The theory of operation, the protocol these follow and the numpy reference they are tested
 * against are in kernels.py, which builds this file with the system's cc at first use and
 * checks every array's dtype, shape and contiguity before a call: nothing here checks them.
 * A function returns 0 (having written nothing but its own outputs) when the batch is not
 * the plain case; the caller then runs the numpy engine, which names the error if there is
 * one.
 *
 * Array layout (heap.py): bits is (2, maxw, npages) uint64, C order, so word w of span s's
 * buffer b is bits[(b * maxw + w) * npages + s].
 */
#include <stdint.h>

#define M32 0xFFFFFFFFull
/* the stores before it are seen (by another process, or after a kill) before the stores
 * after it: a release fence, which on x86 only stops the compiler reordering them */
#define BARRIER() __atomic_thread_fence(__ATOMIC_RELEASE)

static inline int64_t popcount64(uint64_t x) { return (int64_t)__builtin_popcountll(x); }

/* The bitmap words of span s: a class's 1 or 2 words (every class up to 128 objects a
 * span) in straight-line code, any other in a loop.  Returns 0 if a marked object is not
 * allocated; adds the marked objects to *na and the allocated to *nb. */
static inline int span_bits(const uint64_t *A, const uint64_t *M, int64_t stride, int64_t s,
                            int64_t k, int64_t *na, int64_t *nb) {
    if (k <= 2) {
        const uint64_t m0 = M[s], a0 = A[s];
        const uint64_t m1 = k == 2 ? M[stride + s] : 0, a1 = k == 2 ? A[stride + s] : 0;
        *na = popcount64(m0) + popcount64(m1);
        *nb += popcount64(a0) + popcount64(a1);
        return ((m0 & ~a0) | (m1 & ~a1)) == 0;
    }
    int64_t n = 0;
    for (int64_t w = 0; w < k; w++) {
        const uint64_t mw = M[w * stride + s], aw = A[w * stride + s];
        if (mw & ~aw)
            return 0;
        n += popcount64(mw);
        *nb += popcount64(aw);
    }
    *na = n;
    return 1;
}

/* Phase 1 of a sweep at heap sweepgen h, alloc buffer a: pure reads, and what must be
 * known before the first write (the tallies' in-flight batch; the running counters, which
 * lead the stores so that no reader sees a page free and still counted in use).  out[7] =
 * objects allocated before, pages, objects left, object-bytes delta, occupied-pages delta,
 * spans left empty, their pages.  nalloc[n] = each span's marked objects.  A span left
 * empty must own its pages (freeSpan's check, made here so the commit can free it in
 * place). */
int sweep_check(const int64_t *spans, int64_t n, int64_t h, int64_t a, int64_t in_use,
                const uint64_t *bits, int64_t maxw, int64_t npages_total,
                const uint8_t *state, const uint32_t *sweepgen, const uint64_t *commit,
                const uint8_t *specials, const uint8_t *cls, const int32_t *npages,
                const int64_t *nwords, const int64_t *csize, int64_t page_size,
                const uint16_t *alloc_count, const int32_t *page_span, int64_t *nalloc,
                int64_t *out) {
    const uint32_t hm1 = (uint32_t)((h - 1) & M32), hm2 = (uint32_t)((h - 2) & M32);
    const uint64_t *A = bits + a * maxw * npages_total;
    const uint64_t *M = bits + (a ^ 1) * maxw * npages_total;
    int64_t nbefore = 0, pages = 0, nleft = 0, prev = -1;
    int64_t dbytes = 0, docc = 0, nempty = 0, epages = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t s = spans[i];
        if (s <= prev || s >= npages_total || state[s] != in_use || sweepgen[s] != hm1 ||
            specials[s] != 0 || (uint32_t)(commit[s] & M32) != hm2)
            return 0; /* not ascending, not claimed at h-1, finalizers, or committed */
        int64_t na;
        const int64_t c = cls[s], old = alloc_count[s];
        if (!span_bits(A, M, npages_total, s, nwords[c], &na, &nbefore))
            return 0; /* found pointer to free object */
        if (na > old)
            return 0; /* sweep increased allocation count */
        nalloc[i] = na;
        nleft += na;
        const int64_t npg = npages[s];
        if (npg < 1 || s + npg > npages_total)
            return 0;
        if (na != old)
            dbytes += (na - old) * (c == 0 ? npg * page_size : csize[c]);
        if (na == 0) {
            for (int64_t p = s; p < s + npg; p++)
                if (page_span[p] != s)
                    return 0; /* freeSpan: a page of the span belongs to another span */
            nempty++;
            epages += npg;
            docc -= old != 0 ? npg : 0;
        }
        pages += npg;
        prev = s + npg - 1;
    }
    out[0] = nbefore;
    out[1] = pages;
    out[2] = nleft;
    out[3] = dbytes;
    out[4] = docc;
    out[5] = nempty;
    out[6] = epages;
    return 1;
}

/* Phases 2 and 3 of a batch sweep_check accepted, span by span in the commit protocol's
 * order: allocCount and freeindex, the commit (one 8-byte store), the old alloc buffer
 * zeroed, sweepgen published; then, unless preserve, the set, or for a span left empty
 * freeSpan's stores in freeSpan's order (out of its set, DEAD, its pages free).  Returns
 * how many spans were freed, written to empties with their pages in epages, each span's
 * pages added to *freed_tally (this process's freed-pages tally) as its pages go free;
 * *words = the bitmap words swept. */
int64_t sweep_commit(const int64_t *spans, int64_t n, int64_t h, int64_t a, uint64_t *bits,
                     int64_t maxw, int64_t npages_total, const uint8_t *cls,
                     const int64_t *nwords, const uint16_t *nelems, uint16_t *alloc_count,
                     uint16_t *freeindex,
                     volatile uint64_t *commit, volatile uint32_t *sweepgen,
                     uint8_t *span_set, const int64_t *nalloc, int64_t preserve,
                     int64_t set_full, int64_t set_partial, volatile uint8_t *state,
                     const int32_t *npages, volatile int32_t *page_span, int64_t dead,
                     int64_t set_none, int64_t page_free, int64_t *empties, int64_t *epages,
                     int64_t *words, volatile int64_t *freed_tally) {
    const uint64_t low = (uint64_t)h & M32;
    uint64_t *A = bits + a * maxw * npages_total;
    int64_t ne = 0, nw = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t s = spans[i], na = nalloc[i], k = nwords[cls[s]];
        nw += k;
        alloc_count[s] = (uint16_t)na;
        freeindex[s] = 0;
        BARRIER();
        commit[s] = (((commit[s] >> 32) + 1) << 32) | low; /* the commit */
        for (int64_t w = 0; w < k; w++)
            A[w * npages_total + s] = 0; /* the old alloc buffer: the fresh mark bitmap */
        BARRIER();
        sweepgen[s] = (uint32_t)low; /* publish */
        BARRIER();
        if (preserve)
            continue;
        if (na != 0) {
            span_set[s] = (uint8_t)(na == nelems[s] ? set_full : set_partial);
            continue;
        }
        const int64_t npg = npages[s];
        span_set[s] = (uint8_t)set_none;
        state[s] = (uint8_t)dead;
        BARRIER();
        for (int64_t p = s; p < s + npg; p++)
            page_span[p] = (int32_t)page_free; /* the pages are free from here on */
        *freed_tally += npg; /* at once: a kill leaves at most this span's pages uncounted */
        empties[ne] = s;
        epages[ne++] = npg;
    }
    *words = nw;
    return ne;
}

/* freeSpan of the ascending in-use starts: every page checked to be its span's first (else
 * 0, nothing written), then per span: out of its set, DEAD, its pages free, its pages added
 * to *freed_tally.  n[k] = each span's pages; out[2] = pages freed, pages of spans that
 * still counted objects. */
int free_spans_plain(const int64_t *starts, int64_t k, int64_t npages_total, int64_t in_use,
                     int64_t dead, int64_t set_none, int64_t page_free, volatile uint8_t *state,
                     uint8_t *span_set, const int32_t *npages, volatile int32_t *page_span,
                     const uint16_t *alloc_count, int64_t *n, int64_t *out,
                     volatile int64_t *freed_tally) {
    int64_t prev = -1;
    for (int64_t i = 0; i < k; i++) {
        const int64_t s = starts[i];
        if (s <= prev || s >= npages_total || state[s] != in_use)
            return 0;
        const int64_t npg = npages[s];
        if (npg < 1 || s + npg > npages_total)
            return 0;
        for (int64_t p = s; p < s + npg; p++)
            if (page_span[p] != s)
                return 0;
        prev = s + npg - 1;
    }
    int64_t pages = 0, held = 0;
    for (int64_t i = 0; i < k; i++) {
        const int64_t s = starts[i], npg = npages[s];
        n[i] = npg;
        span_set[s] = (uint8_t)set_none;
        state[s] = (uint8_t)dead;
        BARRIER();
        for (int64_t p = s; p < s + npg; p++)
            page_span[p] = (int32_t)page_free; /* the pages are free from here on */
        *freed_tally += npg;
        pages += npg;
        if (alloc_count[s] != 0)
            held += npg;
    }
    out[0] = pages;
    out[1] = held;
    return 1;
}

/* The first count spans of npages pages that the free runs in [lo, hi) hold, each run cut
 * into spans from its start (mheap._carve): runs of free backed pages (backed), else of
 * free pages at all less the spans taken already (offsets from lo, ascending, npages
 * each).  Writes their offsets from lo to out; returns how many.  Pure reads. */
int64_t carve(const int32_t *page_span, const uint8_t *scavenged, int64_t lo, int64_t hi,
              int64_t npages, int64_t count, int64_t page_free, int64_t backed,
              const int64_t *taken, int64_t ntaken, int64_t *out) {
    int64_t found = 0, run = lo, ti = 0;
    for (int64_t p = lo; p < hi && found < count; p++) {
        int ok = page_span[p] == page_free && (!backed || scavenged[p] == 0);
        if (ok && ntaken) {
            const int64_t q = p - lo;
            while (ti < ntaken && taken[ti] + npages <= q)
                ti++;
            if (ti < ntaken && taken[ti] <= q)
                ok = 0;
        }
        if (!ok) {
            run = p + 1;
            continue;
        }
        if (p - run + 1 == npages) {
            out[found++] = run - lo;
            run = p + 1;
        }
    }
    return found;
}
