module sweeperd/goalloc

go 1.19
