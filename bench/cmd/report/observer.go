package main

import (
	"fmt"
	"strings"
)

// The Observer section: BenchmarkOverhead's variants with an Observer on
// the connector beside their twins without one, and the jsonstreamotel module's
// Observer recording into the OpenTelemetry SDK (BenchmarkObserveStream).

// observedPairs are the Overhead variants with an Observer and their
// twins without.
var observedPairs = [][2]string{
	{"jsonstream", "jsonstream-observed"},
	{"jsonstream-paused-once", "jsonstream-observed-paused-once"},
}

// observeName names a result of the jsonstreamotel module's BenchmarkObserveStream:
// events is "query" (started, first row, ended) or "pause" (paused,
// resumed).
func observeName(events string) string { return "ObserveStream/" + events }

func (r *report) observer(b *strings.Builder) {
	if !r.measured(overheadName(1, "jsonstream-observed")) && !r.has(observeName("")) {
		return
	}
	b.WriteString("## Observer\n\n")
	b.WriteString("`BenchmarkOverhead` again, with *observed*: an `Observer` on the connector that counts the " +
		"events by kind in atomics (started, first row and ended per query; paused and resumed too with a " +
		"pause), each beside the same query without one, in the same rounds.\n\n")
	b.WriteString("| rows | variant | CPU ns/op | B/op | allocs/op | CPU ÷ without observer |\n|---:|---|---:|---:|---:|---:|\n")
	var notes []string
	for _, pair := range observedPairs {
		for _, n := range []int{1, 100} {
			plain, observed := overheadName(n, pair[0]), overheadName(n, pair[1])
			for _, name := range []string{plain, observed} {
				cpu, ok := r.res.summary(name, "cpu-ns/op")
				if !ok {
					continue
				}
				bytes, _ := r.res.median(name, "B/op")
				allocs, _ := r.res.median(name, "allocs/op")
				fmt.Fprintf(b, "| %d | %s | %s | %.0f | %.0f | %s |\n", n, strings.TrimPrefix(name, fmt.Sprintf("Overhead/rows=%d/", n)),
					withInterval(fmt.Sprintf("%.0f", cpu.Center), cpu), bytes, allocs, r.vs(name, plain, "cpu-ns/op"))
			}
			pa, ok1 := r.res.median(plain, "allocs/op")
			oa, ok2 := r.res.median(observed, "allocs/op")
			pb, _ := r.res.median(plain, "B/op")
			ob, _ := r.res.median(observed, "B/op")
			pc, _ := r.res.median(plain, "cpu-ns/op")
			oc, _ := r.res.median(observed, "cpu-ns/op")
			if ok1 && ok2 {
				notes = append(notes, fmt.Sprintf("- %s, %d row(s), with an observer: %+.0f allocations and %+.0f bytes per query, "+
					"%+.0f ns of CPU (%s).\n", pair[0], n, oa-pa, ob-pb, oc-pc, r.vs(observed, plain, "cpu-ns/op")))
				what := fmt.Sprintf("%s, a query of %d row(s), observed", pair[0], n)
				const against = "the same query without an observer (in-memory, BenchmarkOverhead)"
				r.compare(against, what, observed, plain, "cpu-ns/op", lowerIsBetter, duration)
				r.compare(against, what, observed, plain, "allocs/op", lowerIsBetter, allocCount)
			}
		}
	}
	b.WriteString("\n")
	for _, n := range notes {
		b.WriteString(n)
	}
	q, okQ := r.res.summary(observeName("query"), "cpu-ns/op")
	p, okP := r.res.summary(observeName("pause"), "cpu-ns/op")
	if okQ && okP {
		qa, _ := r.res.median(observeName("query"), "allocs/op")
		pa, _ := r.res.median(observeName("pause"), "allocs/op")
		fmt.Fprintf(b, "- `BenchmarkObserveStream` (jsonstreamotel module): the OpenTelemetry `Observer` recording into the SDK "+
			"(`sdk/metric`, manual reader), no span in the context: **%s** of CPU for a query's three events "+
			"(six measurements), **%s** for a pause and its resume; %.0f and %.0f allocations.\n",
			withInterval(duration(q.Center), q), withInterval(duration(p.Center), p), qa, pa)
	}
	b.WriteString("\n")
}
