package main

import (
	"runtime/debug"
	"time"
)

var keep [][]byte

func main() {
	for round := 0; round < 3; round++ {
		for i := 0; i < 4000; i++ {
			keep = append(keep, make([]byte, 32<<10))
			if len(keep) > 2000 {
				keep = keep[1000:]
			}
		}
		keep = nil
		time.Sleep(300 * time.Millisecond)
		debug.FreeOSMemory()
	}
}
