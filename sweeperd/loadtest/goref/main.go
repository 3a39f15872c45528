// Command goref is sweeperd's reference workload in the real Go runtime.
//
// It reads a scenario as JSON on stdin (the phases of a sweeperd scenario, with its size
// classes turned into byte sizes) and follows it with []byte objects: each of -workers
// goroutines holds its share of the live heap (kept objects, the oldest dropped first when
// the target falls, every Nth object pinned for the rest of the run) and allocates its share
// of the garbage rate.  Every sample period it prints one JSON line of runtime/metrics on
// stdout.  Run it with GODEBUG=gctrace=1 and its stderr is the program's gctrace; GOGC and
// GOMEMLIMIT are the runtime's own.  `sweeperd loadtest --go-reference` builds and runs it;
// its gctrace output is also how the sample traces in config/traces/ were made.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

const mib = 1 << 20
const sliceHeader = 24 // bytes of a []byte header on 64-bit
const minChunk, maxChunk = 64 << 10, 256 << 10

type phase struct {
	Seconds        float64 `json:"seconds"`
	LiveFrom       float64 `json:"live_from_mib"`
	LiveTo         float64 `json:"live_to_mib"`
	Garbage        float64 `json:"garbage_mib_s"` // < 0: as fast as possible
	Sizes          []int   `json:"sizes"`
	LongLivedEvery int     `json:"long_lived_every"`
	LargeFraction  float64 `json:"large_fraction"`
}

type scenario struct {
	Phases   []phase `json:"phases"`
	Workers  int     `json:"workers"`
	SampleMs int     `json:"sample_ms"`
	// > 0: a goroutine calls debug.FreeOSMemory this often (a service's periodic release)
	FreeOSMemoryEveryS float64 `json:"free_os_memory_every_s"`
}

// at returns the phase in force t seconds in and the live heap (MiB) it asks for.
func (s *scenario) at(t float64) (*phase, float64) {
	start := 0.0
	for i := range s.Phases {
		p := &s.Phases[i]
		if t < start+p.Seconds || i == len(s.Phases)-1 {
			f := (t - start) / p.Seconds
			if f < 0 {
				f = 0
			} else if f > 1 {
				f = 1
			}
			return p, p.LiveFrom + (p.LiveTo-p.LiveFrom)*f
		}
		start += p.Seconds
	}
	return nil, 0
}

func (s *scenario) seconds() float64 {
	t := 0.0
	for _, p := range s.Phases {
		t += p.Seconds
	}
	return t
}

// mean returns the mean of sizes: a chunk's header array is sized for it, so that the array is
// about filled when the chunk's bytes are (sized for the smallest, most of it was never
// written: with the default classes 16..4864 B, ~60% of a chunk, and the Go heap's books
// counted ~400 MiB of 1 GiB live that the kernel never backed).
func mean(sizes []int) int {
	t := 0
	for _, s := range sizes {
		t += s
	}
	return t / len(sizes)
}

var sinkMu sync.Mutex
var sink []byte // garbage is stored here once so the compiler cannot elide it

type chunk struct {
	objs  [][]byte
	bytes int
}

// worker follows its share of the scenario until the scenario's end.
func worker(s *scenario, share float64, seed int64, t0 time.Time, done *sync.WaitGroup) {
	defer done.Done()
	rng := rand.New(rand.NewSource(seed))
	var kept []chunk
	var pinned [][]byte
	keptBytes, n := 0, 0
	budget, last := 0.0, time.Now()
	end := s.seconds()
	alloc := func(p *phase) []byte {
		size := p.Sizes[rng.Intn(len(p.Sizes))]
		if p.LargeFraction > 0 && rng.Float64() < p.LargeFraction {
			size = 32<<10 + rng.Intn(224<<10)
		}
		b := make([]byte, size)
		b[0], b[len(b)-1] = 1, 1
		return b
	}
	for {
		now := time.Now()
		t := now.Sub(t0).Seconds()
		if t >= end {
			if os.Getenv("GOREF_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "kept %d in %d chunks, pinned %d\n", keptBytes, len(kept), len(pinned))
			}
			return
		}
		p, live := s.at(t)
		target := int(live * mib * share)
		for keptBytes > target && len(kept) > 0 {
			keptBytes -= kept[0].bytes
			kept[0] = chunk{}
			kept = kept[1:]
		}
		if p.Garbage < 0 {
			budget = 1 << 20
		} else {
			budget += p.Garbage * mib * share * now.Sub(last).Seconds()
			if max := p.Garbage * mib * share; budget > max {
				budget = max // at most a second's worth owed
			}
		}
		last = now
		switch {
		case target-keptBytes >= minChunk:
			// one chunk of up to maxChunk bytes, its header array sized up front: chunks
			// of a few objects would make the headers a large part of the live heap
			want := target - keptBytes
			if want > maxChunk {
				want = maxChunk
			}
			c := chunk{objs: make([][]byte, 0, 1+want/(sliceHeader+mean(p.Sizes)))}
			c.bytes = cap(c.objs) * sliceHeader // the header array is live heap too
			for c.bytes < want && len(c.objs) < cap(c.objs) {
				b := alloc(p)
				n++
				if p.LongLivedEvery > 0 && n%p.LongLivedEvery == 0 {
					pinned = append(pinned, b)
					keptBytes += len(b) + sliceHeader
				} else {
					c.objs = append(c.objs, b)
					c.bytes += len(b)
				}
			}
			keptBytes += c.bytes
			kept = append(kept, c)
		case budget > 0:
			for got := 0; got < 64<<10 && budget > 0; {
				b := alloc(p)
				n++
				if p.LongLivedEvery > 0 && n%p.LongLivedEvery == 0 {
					pinned = append(pinned, b)
					keptBytes += len(b) + sliceHeader
				}
				got += len(b)
				budget -= float64(len(b))
				if got >= 64<<10 {
					sinkMu.Lock()
					sink = b
					sinkMu.Unlock()
				}
			}
		default:
			time.Sleep(time.Millisecond)
		}
	}
}

var names = []string{
	"/gc/cycles/total:gc-cycles",
	"/gc/heap/goal:bytes",
	"/gc/heap/allocs:bytes", // Go 1.16+: all bytes the program allocated, as sweeperd's allocated_bytes
	"/gc/heap/live:bytes", // Go 1.21+ (KindBad, left out, before)
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/total:bytes",
}

func sample(t0 time.Time, s *scenario, out *bufio.Writer) {
	ms := make([]metrics.Sample, len(names))
	for i, n := range names {
		ms[i].Name = n
	}
	metrics.Read(ms)
	row := map[string]float64{"t": time.Since(t0).Seconds()}
	for _, m := range ms {
		switch m.Value.Kind() {
		case metrics.KindUint64:
			row[m.Name] = float64(m.Value.Uint64())
		case metrics.KindFloat64:
			row[m.Name] = m.Value.Float64()
		}
	}
	_, live := s.at(row["t"])
	row["target_live_bytes"] = live * mib
	line, _ := json.Marshal(row)
	out.Write(line)
	out.WriteByte('\n')
	out.Flush()
}

func main() {
	var s scenario
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil || len(s.Phases) == 0 {
		fmt.Fprintf(os.Stderr, "goref: bad scenario on stdin: %v\n", err)
		os.Exit(2)
	}
	for i, p := range s.Phases {
		if p.Seconds <= 0 || len(p.Sizes) == 0 {
			fmt.Fprintf(os.Stderr, "goref: phase %d: seconds must be > 0 and sizes non-empty\n", i)
			os.Exit(2)
		}
	}
	if s.Workers < 1 {
		s.Workers = 1
	}
	if s.SampleMs < 1 {
		s.SampleMs = 250
	}
	// what the runtime took from GOGC and GOMEMLIMIT, read back (each setter returns the
	// previous value; the second call restores it)
	gogc := debug.SetGCPercent(-1)
	debug.SetGCPercent(gogc)
	limit := debug.SetMemoryLimit(-1) // a negative input only reads
	fmt.Fprintf(os.Stderr, "goref: gogc=%d memory_limit=%d free_os_memory_every_s=%g\n",
		gogc, limit, s.FreeOSMemoryEveryS)
	out := bufio.NewWriter(os.Stdout)
	t0 := time.Now()
	if s.FreeOSMemoryEveryS > 0 {
		go func() {
			t := time.NewTicker(time.Duration(s.FreeOSMemoryEveryS * float64(time.Second)))
			defer t.Stop()
			for range t.C {
				debug.FreeOSMemory()
			}
		}()
	}
	var done sync.WaitGroup
	for w := 0; w < s.Workers; w++ {
		done.Add(1)
		go worker(&s, 1/float64(s.Workers), int64(w+1), t0, &done)
	}
	finished := make(chan struct{})
	go func() { done.Wait(); close(finished) }()
	tick := time.NewTicker(time.Duration(s.SampleMs) * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			sample(t0, &s, out)
		case <-finished:
			sample(t0, &s, out)
			return
		}
	}
}
