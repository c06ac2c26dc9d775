package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
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

// benchLine is a result line of go test -bench: the name with its
// GOMAXPROCS suffix, the iterations, then value-unit pairs.
var benchLine = regexp.MustCompile(`^Benchmark(\S+?)(?:-\d+)?\s+(\d+)\s+(.+)$`)

// addBench records the result lines of a benchmark run and returns how
// many there were.
func (r *results) addBench(out []byte) (int, error) {
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		if len(fields)%2 != 0 {
			return n, fmt.Errorf("cannot parse %q", line)
		}
		for i := 0; i < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return n, fmt.Errorf("cannot parse %q: %w", line, err)
			}
			r.add(m[1], fields[i+1], v)
		}
		n++
	}
	return n, nil
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

// stat is the summary of one measurement over the rounds.
type stat struct {
	median float64
	// spread is (max-min)/median: how far apart the rounds were.
	spread float64
	n      int
}

func (r *results) stat(name, unit string) (stat, bool) {
	vs := r.samples[name][unit]
	if len(vs) == 0 {
		return stat{}, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	var med float64
	if k := len(s); k%2 == 1 {
		med = s[k/2]
	} else {
		med = (s[k/2-1] + s[k/2]) / 2
	}
	st := stat{median: med, n: len(s)}
	if med != 0 {
		st.spread = (s[len(s)-1] - s[0]) / med
	}
	return st, true
}

// median is stat's median, with ok false when nothing was measured.
func (r *results) median(name, unit string) (float64, bool) {
	s, ok := r.stat(name, unit)
	return s.median, ok
}
