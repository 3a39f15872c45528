// goalloc: the Go baseline of `sweeperd bench alloc`.  One goroutine allocates objects of
// one size ([]uint64 of size/8 words, so the runtime serves them from exactly that size
// class, pointer-free as sweeperd's are) for a fixed time, and writes every 8-byte word of
// each with the payload sweeperd's mutators write: the first word its address/8 times the
// golden ratio, xor a per-object seed; every other word one byte of the seed's hash repeated
// (malloc.py's fill_byte; sweeperd writes those as a memset).  Each object dies at once (the sink holds only the last),
// so the live heap stays tiny and the GC runs as often as GOGC asks: what the benchmark
// measures in sweeperd, where the heap is dropped and swept whenever it is 90% full.
//
// Prints one JSON line: objects, seconds (wall, from the first allocation), gc_cycles,
// go_version.  Standard library only (built offline).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"
)

const (
	gold = 0x9E3779B97F4A7C15
	mix  = 0xBF58476D1CE4E5B9 // malloc.py's _MIX
)

var sink []uint64

func main() {
	size := flag.Int("size", 64, "object bytes (a size class; a multiple of 8)")
	seconds := flag.Float64("seconds", 3, "how long to allocate")
	flag.Parse()
	if *size < 8 || *size%8 != 0 || *seconds <= 0 {
		fmt.Fprintln(os.Stderr, "goalloc: -size must be a positive multiple of 8 and -seconds > 0")
		os.Exit(2)
	}
	words := *size / 8
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gc0 := ms.NumGC
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	var objects, seed uint64
	for {
		for k := 0; k < 4096; k++ {
			s := make([]uint64, words)
			base := uint64(uintptr(unsafe.Pointer(&s[0]))) >> 3
			seed++
			s[0] = base*gold ^ seed
			fill := ((seed*mix)>>56 | 1) * 0x0101010101010101
			for i := 1; i < len(s); i++ {
				s[i] = fill
			}
			sink = s
		}
		objects += 4096
		if !time.Now().Before(deadline) {
			break
		}
	}
	elapsed := time.Since(start).Seconds()
	runtime.ReadMemStats(&ms)
	out, _ := json.Marshal(map[string]any{
		"objects": objects, "seconds": elapsed, "gc_cycles": ms.NumGC - gc0,
		"go_version": runtime.Version(),
	})
	fmt.Println(string(out))
}
