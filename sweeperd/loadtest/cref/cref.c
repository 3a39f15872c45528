/* cref: sweeperd's reference workload on malloc and free (issue 20).
 *
 * It follows a load-test scenario's phases in whatever malloc the process has: glibc's, or
 * jemalloc's, TCMalloc's or mimalloc's put in with LD_PRELOAD by sweeperd/loadtest/cref.py.
 * It is the C twin of goref/main.go, with the same workload shape so that a lab policy and
 * the allocator it is named after are measured on the same work:
 *
 *   - WORKERS threads each hold their share of the phase's live-heap target (a level, or a
 *     ramp from live_from to live_to) as kept objects in chunks; when the target falls, the
 *     oldest chunk goes first (all its objects freed);
 *   - each thread allocates its share of the phase's garbage rate: objects written and freed
 *     at once (a malloc heap has no GC: garbage is gone when it is freed);
 *   - every Nth object (long_lived_every) is pinned for the rest of the run;
 *   - an object's size is one of the phase's sizes, or with probability large_fraction
 *     32..256 KiB; every object is written whole (a real program initialises what it gets).
 *
 * Every sample_ms a sampler thread prints one JSON line on stdout: the time since the start,
 * the target, the live bytes this program holds (object bytes + the chunks' pointer arrays
 * and headers + the pinned arrays: exactly what it asked malloc for and has not freed), and
 * the kernel's view of the process: resident anonymous bytes (/proc/self/statm: resident -
 * shared, i.e. RssAnon), and the process's CPU seconds.  On stderr, once, which malloc is in
 * the process ("cref: allocator=jemalloc version=5.3.0-..."), found by the symbols each
 * allocator exports, so the harness can check that LD_PRELOAD took.
 *
 * Input on stdin, one item a line (written by cref.py; anything else is refused, exit 2):
 *   cref 1
 *   workers W
 *   sample_ms N
 *   phase SECONDS LIVE_FROM_BYTES LIVE_TO_BYTES GARBAGE_BYTES_S LONG_LIVED_EVERY
 *         LARGE_FRACTION NSIZES SIZE...          (one line; GARBAGE_BYTES_S < 0: flat out)
 *   end
 *
 * Invariants: a worker's live tally equals the bytes it holds after each step; a chunk is
 * dropped whole, the oldest first, and only while what is left still reaches the target, and
 * a chunk is made only when the worker holds at least MIN_CHUNK less than its target and
 * stops before an object that would take it past the target (its first object excepted): so
 * a worker holds between its target - MIN_CHUNK and its target + one chunk (MAX_CHUNK + one
 * object), plus what the target moved since its last step, and a level target is reached and
 * then held without churning its chunks (no chunk is made only to be dropped).  A phase is
 * at most MAX_PHASES (the scenario format's limit).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PHASES 1000
#define MAX_SIZES 128
#define MAX_WORKERS 64
#define MIN_CHUNK (16u << 10) /* a chunk is made when the target is this far above */
#define MAX_CHUNK (64u << 10) /* a chunk holds up to this many bytes of objects */
#define LARGE_MIN (32u << 10)
#define LARGE_SPAN (224u << 10)
#define GARBAGE_STEP (64u << 10) /* garbage bytes between looks at the clock */
#define PIN_BLOCK 4096           /* pointers per block of pinned objects */
#define FILL 0xa5

struct phase {
    double seconds, live_from, live_to, garbage; /* bytes; bytes/s (< 0: flat out) */
    long long_lived_every;
    double large_fraction;
    int nsizes;
    size_t sizes[MAX_SIZES];
};

static struct phase phases[MAX_PHASES];
static int nphases, nworkers = 2;
static long sample_ms = 100;
static double total_s;
static struct timespec t0;

struct chunk {
    struct chunk *next;
    size_t n, cap, bytes; /* bytes: objects + this header and its pointer array */
    void *objs[];
};

struct pins {
    struct pins *next;
    size_t n;
    void *objs[PIN_BLOCK];
};

struct worker {
    pthread_t thread;
    int id;
    uint64_t rng;
    _Atomic size_t live, allocated, freed;
    _Atomic int done;
    char pad[64];
};

static struct worker workers[MAX_WORKERS];
/* set by main after the last sample: a worker's exit (its thread cache flushed, its arena
   released) is not part of the run, so the workers wait for it before they return */
static _Atomic int sampled;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
}

/* The phase in force t seconds in, and the live bytes it asks for (all workers). */
static const struct phase *at(double t, double *live) {
    double start = 0;
    for (int i = 0; i < nphases; i++) {
        const struct phase *p = &phases[i];
        if (t < start + p->seconds || i == nphases - 1) {
            double f = (t - start) / p->seconds;
            f = f < 0 ? 0 : (f > 1 ? 1 : f);
            *live = p->live_from + (p->live_to - p->live_from) * f;
            return p;
        }
        start += p->seconds;
    }
    *live = 0;
    return &phases[0];
}

static uint64_t next_rand(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void *must(void *p, size_t n) {
    if (p == NULL) {
        fprintf(stderr, "cref: malloc(%zu) failed\n", n);
        exit(3);
    }
    return p;
}

static size_t pick_size(struct worker *w, const struct phase *p) {
    uint64_t r = next_rand(&w->rng);
    if (p->large_fraction > 0 && (double)(r >> 11) / 9007199254740992.0 < p->large_fraction)
        return LARGE_MIN + (size_t)(next_rand(&w->rng) % LARGE_SPAN);
    return p->sizes[next_rand(&w->rng) % (uint64_t)p->nsizes];
}

static void *new_object(struct worker *w, size_t size) {
    void *b = must(malloc(size), size);
    memset(b, FILL, size);
    atomic_fetch_add_explicit(&w->allocated, size, memory_order_relaxed);
    return b;
}

static void pin(struct worker *w, struct pins **pins, void *obj, size_t size) {
    if (*pins == NULL || (*pins)->n == PIN_BLOCK) {
        struct pins *b = must(malloc(sizeof *b), sizeof *b);
        b->next = *pins;
        b->n = 0;
        *pins = b;
        atomic_fetch_add_explicit(&w->live, sizeof *b, memory_order_relaxed);
        atomic_fetch_add_explicit(&w->allocated, sizeof *b, memory_order_relaxed);
    }
    (*pins)->objs[(*pins)->n++] = obj;
    atomic_fetch_add_explicit(&w->live, size, memory_order_relaxed);
}

static void *work(void *arg) {
    struct worker *w = arg;
    double share = 1.0 / nworkers, budget = 0, last = now_s();
    struct chunk *head = NULL, *tail = NULL;
    struct pins *pins = NULL;
    size_t kept = 0; /* bytes in chunks (pinned bytes are in w->live only) */
    unsigned long n = 0;
    for (;;) {
        double t = now_s(), live;
        if (t >= total_s)
            break;
        const struct phase *p = at(t, &live);
        size_t pinned = atomic_load_explicit(&w->live, memory_order_relaxed) - kept;
        double target = live * share - (double)pinned;
        /* the oldest chunk goes first, while what is left still reaches the target */
        while (head != NULL && (double)(kept - head->bytes) >= target) {
            struct chunk *c = head;
            head = c->next;
            if (head == NULL)
                tail = NULL;
            for (size_t i = 0; i < c->n; i++)
                free(c->objs[i]);
            kept -= c->bytes;
            atomic_fetch_sub_explicit(&w->live, c->bytes, memory_order_relaxed);
            atomic_fetch_add_explicit(&w->freed, c->bytes, memory_order_relaxed);
            free(c);
        }
        if (p->garbage < 0) {
            budget = GARBAGE_STEP;
        } else {
            budget += p->garbage * share * (t - last);
            if (budget > p->garbage * share)
                budget = p->garbage * share; /* at most a second's worth owed */
        }
        last = t;
        if (target - (double)kept >= MIN_CHUNK) {
            size_t want = (size_t)(target - (double)kept);
            if (want > MAX_CHUNK)
                want = MAX_CHUNK;
            size_t mean = 0;
            for (int i = 0; i < p->nsizes; i++)
                mean += p->sizes[i];
            mean /= (size_t)p->nsizes;
            size_t cap = 1 + want / (mean + sizeof(void *));
            size_t head_bytes = sizeof(struct chunk) + cap * sizeof(void *);
            struct chunk *c = must(malloc(head_bytes), head_bytes);
            c->next = NULL;
            c->n = 0;
            c->cap = cap;
            c->bytes = head_bytes;
            atomic_fetch_add_explicit(&w->allocated, head_bytes, memory_order_relaxed);
            atomic_fetch_add_explicit(&w->live, head_bytes, memory_order_relaxed);
            /* filled: this step's bytes, pinned ones too (every object may be pinned) */
            for (size_t filled = head_bytes; filled < want && c->n < c->cap;) {
                size_t size = pick_size(w, p);
                if (filled + size > want && filled > head_bytes)
                    break; /* it would take the worker past its target */
                void *b = new_object(w, size);
                filled += size;
                if (p->long_lived_every > 0 && ++n % (unsigned long)p->long_lived_every == 0) {
                    pin(w, &pins, b, size);
                } else {
                    c->objs[c->n++] = b;
                    c->bytes += size;
                    atomic_fetch_add_explicit(&w->live, size, memory_order_relaxed);
                }
            }
            kept += c->bytes;
            if (tail != NULL)
                tail->next = c;
            else
                head = c;
            tail = c;
        } else if (budget > 0) {
            for (size_t got = 0; got < GARBAGE_STEP && budget > 0;) {
                size_t size = pick_size(w, p);
                void *b = new_object(w, size);
                got += size;
                budget -= (double)size;
                if (p->long_lived_every > 0 && ++n % (unsigned long)p->long_lived_every == 0) {
                    pin(w, &pins, b, size);
                } else {
                    free(b);
                    atomic_fetch_add_explicit(&w->freed, size, memory_order_relaxed);
                }
            }
        } else {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    atomic_store(&w->done, 1);
    while (!atomic_load(&sampled)) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return NULL;
}

static long page_size;

static void sample(void) {
    double t = now_s(), live_target;
    at(t, &live_target);
    size_t live = 0, allocated = 0, freed = 0;
    for (int i = 0; i < nworkers; i++) {
        live += atomic_load_explicit(&workers[i].live, memory_order_relaxed);
        allocated += atomic_load_explicit(&workers[i].allocated, memory_order_relaxed);
        freed += atomic_load_explicit(&workers[i].freed, memory_order_relaxed);
    }
    unsigned long size = 0, resident = 0, shared = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%lu %lu %lu", &size, &resident, &shared) != 3)
            resident = shared = 0;
        fclose(f);
    }
    struct timespec cpu;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
    printf("{\"t\":%.6f,\"target_live_bytes\":%.0f,\"live_bytes\":%zu,\"allocated_bytes\":%zu,"
           "\"freed_bytes\":%zu,\"rss_anon_bytes\":%lu,\"rss_bytes\":%lu,\"cpu_s\":%.6f}\n",
           t, live_target, live, allocated, freed, (resident - shared) * (unsigned long)page_size,
           resident * (unsigned long)page_size, (double)cpu.tv_sec + (double)cpu.tv_nsec / 1e9);
    fflush(stdout);
}

/* Which malloc is in the process: each allocator's own exported symbols. */
static void say_allocator(void) {
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) =
        (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
    int (*mi_version)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mi_version");
    const char *(*tc_version)(int *, int *, const char **) =
        (const char *(*)(int *, int *, const char **))dlsym(RTLD_DEFAULT, "tc_version");
    if (mallctl != NULL) {
        const char *v = "?";
        size_t sz = sizeof v;
        if (mallctl("version", &v, &sz, NULL, 0) != 0)
            v = "?";
        fprintf(stderr, "cref: allocator=jemalloc version=%s\n", v);
    } else if (mi_version != NULL) {
        int v = mi_version();
        fprintf(stderr, "cref: allocator=mimalloc version=%d.%d.%d\n", v / 100, (v % 100) / 10,
                v % 10);
    } else if (tc_version != NULL) {
        int major = 0, minor = 0;
        const char *patch = "";
        const char *v = tc_version(&major, &minor, &patch);
        fprintf(stderr, "cref: allocator=tcmalloc version=%s\n", v ? v : "?");
    } else {
        fprintf(stderr, "cref: allocator=glibc version=%s\n", gnu_get_libc_version());
    }
}

static void refuse(const char *why, int line) {
    fprintf(stderr, "cref: bad scenario on stdin, line %d: %s\n", line, why);
    exit(2);
}

static void read_input(void) {
    char buf[8192];
    int line = 0, ended = 0, header = 0;
    while (fgets(buf, sizeof buf, stdin) != NULL) {
        line++;
        if (strchr(buf, '\n') == NULL && !feof(stdin))
            refuse("a line longer than 8 KiB (or not text)", line);
        char word[16];
        int used = 0;
        if (sscanf(buf, "%15s%n", word, &used) != 1)
            continue;
        char *rest = buf + used;
        long v = 0;
        if (!header) {
            if (strcmp(word, "cref") != 0 || sscanf(rest, "%ld", &v) != 1 || v != 1)
                refuse("the first line must be 'cref 1'", line);
            header = 1;
        } else if (strcmp(word, "workers") == 0) {
            if (sscanf(rest, "%ld", &v) != 1 || v < 1 || v > MAX_WORKERS)
                refuse("workers must be 1..64", line);
            nworkers = (int)v;
        } else if (strcmp(word, "sample_ms") == 0) {
            if (sscanf(rest, "%ld", &sample_ms) != 1 || sample_ms < 1 || sample_ms > 60000)
                refuse("sample_ms must be 1..60000", line);
        } else if (strcmp(word, "phase") == 0) {
            if (nphases == MAX_PHASES)
                refuse("more than 1000 phases", line);
            struct phase *p = &phases[nphases];
            int k = 0;
            long nsizes = 0;
            if (sscanf(rest, "%lf %lf %lf %lf %ld %lf %ld%n", &p->seconds, &p->live_from,
                       &p->live_to, &p->garbage, &p->long_lived_every, &p->large_fraction,
                       &nsizes, &k) != 7)
                refuse("a phase is SECONDS LIVE_FROM LIVE_TO GARBAGE EVERY LARGE NSIZES SIZE...",
                       line);
            if (!(p->seconds > 0 && p->seconds < 1e7))
                refuse("a phase's seconds must be in (0, 1e7)", line);
            if (!(p->live_from >= 0 && p->live_from <= 1e13 && p->live_to >= 0 &&
                  p->live_to <= 1e13))
                refuse("a phase's live bytes must be in 0..1e13", line);
            if (!(p->garbage < 1e13))
                refuse("a phase's garbage rate must be below 1e13 bytes/s (< 0: flat out)", line);
            if (p->long_lived_every < 0)
                refuse("a phase's long_lived_every must be >= 0", line);
            if (!(p->large_fraction >= 0 && p->large_fraction <= 1))
                refuse("a phase's large fraction must be in 0..1", line);
            if (nsizes < 1 || nsizes > MAX_SIZES)
                refuse("a phase's NSIZES must be 1..128", line);
            p->nsizes = (int)nsizes;
            rest += k;
            for (int i = 0; i < p->nsizes; i++) {
                long long sz = 0;
                if (sscanf(rest, "%lld%n", &sz, &k) != 1)
                    refuse("fewer sizes than NSIZES", line);
                if (sz < 1 || sz > (1ll << 30))
                    refuse("a size must be 1..2^30 bytes", line);
                p->sizes[i] = (size_t)sz;
                rest += k;
            }
            if (sscanf(rest, "%15s", word) == 1)
                refuse("more on the line than NSIZES sizes", line);
            total_s += p->seconds;
            nphases++;
        } else if (strcmp(word, "end") == 0) {
            ended = 1;
            break;
        } else {
            refuse("unknown item", line);
        }
    }
    if (!header || !ended || nphases == 0)
        refuse("no 'cref 1' header, no phases, or no 'end' line", line);
}

int main(void) {
    read_input();
    page_size = sysconf(_SC_PAGESIZE);
    free(must(malloc(1), 1)); /* the allocator's start-up before anything is measured */
    say_allocator();
    fprintf(stderr, "cref: workers=%d sample_ms=%ld seconds=%g\n", nworkers, sample_ms, total_s);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        if (pthread_create(&workers[i].thread, NULL, work, &workers[i]) != 0) {
            fprintf(stderr, "cref: cannot start worker %d\n", i);
            return 3;
        }
    }
    double next = 0;
    for (;;) {
        int done = 1;
        for (int i = 0; i < nworkers; i++)
            done &= atomic_load(&workers[i].done);
        if (done)
            break;
        sample();
        next += (double)sample_ms / 1000;
        /* asleep in slices of at most 10 ms: the run ends when the workers do */
        for (double wait = next - now_s(); wait > 0; wait = next - now_s()) {
            int all_done = 1;
            for (int i = 0; i < nworkers; i++)
                all_done &= atomic_load(&workers[i].done);
            if (all_done)
                break;
            double slice = wait < 0.01 ? wait : 0.01;
            struct timespec ts = {0, (long)(slice * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    sample();
    atomic_store(&sampled, 1);
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    return 0;
}
