module sweeperd/goref

go 1.19
