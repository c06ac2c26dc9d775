package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"github.com/jsonstream/jsonstream/bench"
	"github.com/jsonstream/jsonstream/internal/dataset"
)

// samplePeriod is how often the child reads its heap size. The heap of a
// streaming client saws up and down with each GC cycle, several times a
// second; a few milliseconds catch the tops.
const samplePeriod = 2 * time.Millisecond

// heapMetric is the memory occupied by heap objects, live or not yet
// swept: what the heap holds, as the GC lets it grow.
const heapMetric = "/memory/classes/heap/objects:bytes"

// peakChild streams rows documents with the named client, in a process of
// its own so that nothing else weighs on its memory, and prints its peak
// heap (sampled) and peak RSS (the kernel's high-water mark) as JSON.
func peakChild(clientName, dsn string, rows int) error {
	if dsn == "" {
		return errors.New("-peak-child needs -dsn")
	}
	var client *bench.Client
	for i := range bench.Clients {
		if bench.Clients[i].Name == clientName {
			client = &bench.Clients[i]
		}
	}
	if client == nil {
		return fmt.Errorf("no client %q", clientName)
	}
	ctx := context.Background()
	conn, err := client.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()

	res := peakResult{Client: clientName}
	sample := []metrics.Sample{{Name: heapMetric}}
	readHeap := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	res.HeapStart = readHeap()
	if res.RSSStart, err = procStatus("VmRSS"); err != nil {
		return err
	}

	// peak is written by the sampler only, and read after done is closed.
	var peak uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(samplePeriod)
		defer t.Stop()
		s := []metrics.Sample{{Name: heapMetric}}
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()

	start := time.Now()
	err = conn.Stream(ctx, dataset.Select(dataset.DefaultTable, rows), func([]byte) bool {
		res.Rows++
		return true
	})
	res.Seconds = time.Since(start).Seconds()
	close(stop)
	<-done
	if err != nil {
		return err
	}
	if res.Rows != rows {
		return fmt.Errorf("streamed %d rows, want %d", res.Rows, rows)
	}
	res.HeapPeak = max(peak, readHeap())
	if res.RSSPeak, err = procStatus("VmHWM"); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// procStatus returns a memory figure of /proc/self/status in bytes.
func procStatus(field string) (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak RSS needs Linux's /proc: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/self/status: %s: %w", field, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}
