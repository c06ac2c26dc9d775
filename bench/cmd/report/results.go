package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/perf/benchfmt"
)

// results holds every measurement of the run: for each benchmark name
// (without "Benchmark" and the GOMAXPROCS suffix) and unit, one value per
// round.
type results struct {
	samples map[string]map[string][]float64
}

func newResults() *results {
	return &results{samples: make(map[string]map[string][]float64)}
}

func (r *results) add(name, unit string, v float64) {
	units := r.samples[name]
	if units == nil {
		units = make(map[string][]float64)
		r.samples[name] = units
	}
	units[unit] = append(units[unit], v)
}

// addBench records the results of a benchmark run, read with benchfmt,
// and returns how many there were. prefix is put before each name, to
// tell the runs of another build of the same benchmarks apart.
func (r *results) addBench(out []byte, prefix string) (int, error) {
	n := 0
	rd := benchfmt.NewReader(bytes.NewReader(out), "")
	for rd.Scan() {
		switch rec := rd.Result().(type) {
		case *benchfmt.SyntaxError:
			return n, rec
		case *benchfmt.Result:
			name := prefix + benchName(rec.Name)
			for _, v := range rec.Values {
				// benchfmt tidies ns/op into sec/op; the report keeps the
				// units the benchmarks print.
				if v.OrigUnit != "" {
					r.add(name, v.OrigUnit, v.OrigValue)
				} else {
					r.add(name, v.Unit, v.Value)
				}
			}
			n++
		}
	}
	return n, rd.Err()
}

// benchName is a benchmark's name without its GOMAXPROCS suffix, which
// go test adds when GOMAXPROCS is not 1. A suffix is dropped only if it
// is the GOMAXPROCS the benchmarks ran with (this process's, which they
// inherit), so that a name ending in a number, such as
// client=jsonstream-cursor-1000, survives GOMAXPROCS=1.
func benchName(n benchfmt.Name) string {
	full := n.String()
	if base, ok := strings.CutSuffix(full, "-"+strconv.Itoa(runtime.GOMAXPROCS(0))); ok {
		return base
	}
	return full
}

// peakResult is what a peak-memory child prints, as one JSON line.
type peakResult struct {
	Client    string  `json:"client"`
	Rows      int     `json:"rows"`
	Seconds   float64 `json:"seconds"`
	HeapPeak  uint64  `json:"heap_peak"`
	RSSStart  uint64  `json:"rss_start"`
	RSSPeak   uint64  `json:"rss_peak"`
	HeapStart uint64  `json:"heap_start"`
}

// Units of the peak-memory results.
const (
	unitHeapPeak = "heap-peak-bytes"
	unitRSSPeak  = "rss-peak-bytes"
	unitRSSStart = "rss-start-bytes"
	unitSeconds  = "s"
)

func peakName(client string) string { return "Peak/client=" + client }

func (r *results) addPeak(client string, out []byte) (int, error) {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	var p peakResult
	if err := json.Unmarshal(lines[len(lines)-1], &p); err != nil {
		return 0, fmt.Errorf("peak-memory child: %w", err)
	}
	if p.Client != client {
		return 0, fmt.Errorf("peak-memory child measured %q, not %q", p.Client, client)
	}
	name := peakName(client)
	r.add(name, unitHeapPeak, float64(p.HeapPeak))
	r.add(name, unitRSSPeak, float64(p.RSSPeak))
	r.add(name, unitRSSStart, float64(p.RSSStart))
	r.add(name, unitSeconds, p.Seconds)
	return 1, nil
}
