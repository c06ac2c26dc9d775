package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/bench"
)

// report turns the results into RESULTS.md.
type report struct {
	cfg     config
	machine *machine
	res     *results
	took    time.Duration
	loads   []float64
	// jsonv2 is set when the typed decoders also ran under
	// GOEXPERIMENT=jsonv2.
	jsonv2 bool
	// slower collects, while the tables are written, every comparison in
	// which jsonstream's median came out worse.
	slower []finding
	// portalGoals collects the verdicts of the portal section, for the
	// summary.
	portalGoals []portalOutcome
}

// finding is one comparison that jsonstream lost.
type finding struct {
	against string // whom jsonstream lost to, as a section title
	text    string
	// noisy is set when the U test cannot tell the two sides apart, so
	// that the difference may be the machine rather than the code.
	noisy bool
}

var displayNames = map[string]string{
	bench.Jsonstream:         "jsonstream",
	bench.LibPQ:              "lib/pq",
	bench.PgxStdlib:          "pgx (database/sql)",
	bench.PgxNative:          "pgx (native)",
	"jsonstream-each":        "jsonstream Each[T]",
	"jsonstream-writendjson": "jsonstream WriteNDJSON",
	"jsonstream-raw":         "raw copy through jsonstream",
	"inner":                  "inner driver alone",
	bench.RawDrain:           "raw drain (sql.RawBytes)",
	bench.EncodingJSON:       "Each[T], encoding/json",
	bench.Sonic:              "Each[T], sonic",
	bench.GoccyJSON:          "Each[T], goccy/go-json",
	bench.JSONv2:             "Each[T], encoding/json/v2",
}

func display(name string) string {
	if d, ok := displayNames[name]; ok {
		return d
	}
	return name
}

func (r *report) markdown() []byte {
	var b strings.Builder
	sizes := r.sizes()
	largest := sizes[len(sizes)-1]

	// The sections are rendered first, so that the findings are known
	// when the summary at the top is written.
	var body strings.Builder
	r.overhead(&body)
	r.observer(&body)
	r.streaming(&body, sizes)
	r.ceiling(&body, sizes)
	r.earlyClose(&body)
	r.peak(&body)
	r.decode(&body)
	r.ndjson(&body)
	r.typed(&body)
	r.portal(&body)
	r.cursor(&body)

	fmt.Fprintf(&b, "# jsonstream benchmarks\n\n")
	fmt.Fprintf(&b, "jsonstream against lib/pq (which it wraps), pgx through database/sql and pgx native, "+
		"streaming up to %s JSON documents of about %.0f bytes (`SELECT data FROM v_entity ORDER BY id`) "+
		"from a local PostgreSQL %s. Every number is the median of %d rounds; ± is its 95%% confidence "+
		"interval. A ratio is followed by the p-value of a Mann-Whitney U test on the two sides' rounds, "+
		"and by ~ when that p is not below 0.05: the rounds cannot tell the two apart "+
		"([Statistics](#statistics)). Ratios against lib/pq are the point: "+
		"absolute times depend on this machine. Written by `make bench` (`cd bench && go run ./cmd/report`) "+
		"on %s in %s.\n\n",
		count(r.machine.docs), r.machine.docBytes, r.machine.postgres, r.cfg.count,
		time.Now().UTC().Format("2006-01-02"), minutes(r.took))
	if r.cfg.count < roundsForInterval {
		fmt.Fprintf(&b, "**With %d rounds the intervals are unbounded (±∞)**: a 95%% interval of a median needs %d; "+
			"a difference can be significant from %d rounds on.\n\n", r.cfg.count, roundsForInterval, roundsForCompare)
	}

	r.summary(&b, largest)
	r.machineSection(&b)
	b.WriteString(body.String())
	r.slowerSection(&b)
	r.statistics(&b)
	r.reproduce(&b)
	return []byte(b.String())
}

func (r *report) sizes() []int {
	var sizes []int
	for _, n := range bench.Sizes {
		if n <= r.cfg.rows {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 0 {
		sizes = []int{r.cfg.rows}
	}
	return sizes
}

func (r *report) summary(b *strings.Builder, largest int) {
	b.WriteString("## Summary\n\n")
	against := func(name func(client string) string, unit string, format func(float64) string) (string, bool) {
		base, ok := r.res.median(name(bench.LibPQ), unit)
		if !ok || base == 0 {
			return "", false
		}
		parts := []string{"lib/pq " + format(base)}
		for _, c := range clientNames() {
			if c != bench.LibPQ && r.measured(name(c)) {
				parts = append(parts, fmt.Sprintf("%s %s", display(c), r.vs(name(c), name(bench.LibPQ), unit)))
			}
		}
		return strings.Join(parts, ", "), true
	}
	stream := func(c string) string { return streamName(largest, c) }
	if s, ok := against(stream, "rows/s", rate); ok {
		if ceil, ok := r.ceilingBest(largest); ok {
			s += ", the server's ceiling " + r.vs(ceil, streamName(largest, bench.LibPQ), "rows/s")
		}
		fmt.Fprintf(b, "- **Streaming %s rows**, rows/s: %s.\n", count(largest), s)
	}
	if s, ok := against(stream, "cpu-ns/row", duration); ok {
		fmt.Fprintf(b, "- **Client CPU per row** at %s rows (lower is better): %s.\n", count(largest), s)
	}
	if js, ok := r.res.median(earlyName(bench.Jsonstream), "ns/op"); ok {
		var parts []string
		for _, c := range clientNames() {
			if v, ok := r.res.median(earlyName(c), "ns/op"); ok && c != bench.Jsonstream {
				parts = append(parts, fmt.Sprintf("%s %s", display(c), duration(v)))
			}
		}
		fmt.Fprintf(b, "- **Closing after 1 row of %s**: jsonstream %s (query, row and close; the portal keeps the connection), %s.\n",
			count(r.cfg.rows), duration(js), strings.Join(parts, ", "))
	}
	for _, n := range []int{1, 100} {
		inner, ok1 := r.res.median(overheadName(n, "inner"), "allocs/op")
		js, ok2 := r.res.median(overheadName(n, "jsonstream"), "allocs/op")
		arg, ok3 := r.res.median(overheadName(n, "jsonstream-stream-arg"), "allocs/op")
		paused, ok4 := r.res.median(overheadName(n, "jsonstream-paused-once"), "allocs/op")
		innerCPU, _ := r.res.median(overheadName(n, "inner"), "cpu-ns/op")
		jsCPU, _ := r.res.median(overheadName(n, "jsonstream"), "cpu-ns/op")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			continue
		}
		fmt.Fprintf(b, "- **Per query of %d row(s)** on an in-memory driver: never paused %+.0f allocation and %+.0f ns of CPU "+
			"over the inner driver's %.0f allocations and %.0f ns; a Stream argument %+.0f allocations more; the first Pause %+.0f more.\n",
			n, js-inner, jsCPU-innerCPU, inner, innerCPU, arg-js, paused-arg)
	}
	if hp, ok := r.res.median(peakName(bench.Jsonstream), unitRSSPeak); ok {
		if lp, ok := r.res.median(peakName(bench.LibPQ), unitRSSPeak); ok {
			fmt.Fprintf(b, "- **Peak RSS streaming %s rows**: jsonstream %s, lib/pq %s.\n", count(r.cfg.rows), mib(hp), mib(lp))
		}
	}
	r.portalSummary(b)
	r.cursorSummary(b)
	noisy := 0
	for _, f := range r.slower {
		if f.noisy {
			noisy++
		}
	}
	fmt.Fprintf(b, "- **Where jsonstream is slower**: %d comparisons with a significant difference, %d more with a worse median that the rounds cannot tell from noise; "+
		"see [the list](#where-jsonstream-is-slower).\n\n", len(r.slower)-noisy, noisy)
}

func (r *report) machineSection(b *strings.Builder) {
	m := r.machine
	b.WriteString("## Machine and versions\n\n| | |\n|---|---|\n")
	fmt.Fprintf(b, "| CPU | %s, %d logical cores |\n", m.cpu, m.cores)
	if m.memory > 0 {
		fmt.Fprintf(b, "| Memory | %.1f GiB |\n", float64(m.memory)/(1<<30))
	}
	fmt.Fprintf(b, "| OS | %s |\n", m.os)
	fmt.Fprintf(b, "| Go | %s |\n", m.goVersion)
	fmt.Fprintf(b, "| PostgreSQL | %s |\n", m.postgresV)
	server := "given with -dsn"
	if r.cfg.ownServer {
		server = "throwaway server started by the report on this machine (internal/pgtest: fsync off, TCP over 127.0.0.1)"
	}
	fmt.Fprintf(b, "| Server | %s, shared_buffers %s |\n", server, m.buffers)
	for _, d := range m.drivers {
		fmt.Fprintf(b, "| %s | %s |\n", d.path, d.version)
	}
	fmt.Fprintf(b, "| Dataset | %s documents, %.1f bytes on average as text, table and index %.0f MiB |\n", count(m.docs), m.docBytes, m.datasetMiB)
	if len(r.loads) > 0 {
		ls := slices.Clone(r.loads)
		slices.Sort(ls)
		fmt.Fprintf(b, "| Load average | 1-minute load %.1f to %.1f (median %.1f) during the run, the benchmark's own "+
			"client and server accounting for up to 2: anything above that was other work on the machine, "+
			"which the wall-clock numbers feel and the CPU-time ones much less |\n", ls[0], ls[len(ls)-1], ls[len(ls)/2])
	}
	fmt.Fprintf(b, "| Method | %d rounds; each runs every benchmark once per client, each in a process of its own, "+
		"the clients in an order rotated from round to round; go test -benchtime %s; medians, 95%% confidence "+
		"intervals and Mann-Whitney U tests (alpha %.2f) by golang.org/x/perf/benchmath |\n\n",
		r.cfg.count, r.cfg.benchtime, thresholds.CompareAlpha)
}

func overheadName(rows int, variant string) string {
	return fmt.Sprintf("Overhead/rows=%d/%s", rows, variant)
}

func (r *report) overhead(b *strings.Builder) {
	b.WriteString("## Per-query overhead (in-memory driver)\n\n")
	b.WriteString("`BenchmarkOverhead`: one query through database/sql on a fake driver that returns 1 or 100 rows " +
		"of a constant 280-byte document, with no I/O and no allocation per row, so that all that differs is " +
		"the wrapper. *jsonstream* never pauses; *stream-arg* passes a `jsonstream.NewStream()` but never " +
		"pauses; *context-stream* attaches one with `ContextWithStream` instead; *context-options* runs with a " +
		"context made once by `ContextWithOptions`; *paused-once* passes one and calls Pause and Resume once, the Stream included. " +
		"The claim under test: the pause machinery is allocated by the first Pause only, and a query that " +
		"never pauses costs at most one allocation more than the inner driver.\n\n")
	b.WriteString("| rows | variant | ns/op | CPU ns/op | B/op | allocs/op | allocs − inner | CPU ÷ inner |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range []int{1, 100} {
		innerAllocs, okA := r.res.median(overheadName(n, "inner"), "allocs/op")
		for _, v := range overheadVariants {
			name := overheadName(n, v)
			ns, ok := r.res.summary(name, "ns/op")
			if !ok {
				continue
			}
			cpu, _ := r.res.summary(name, "cpu-ns/op")
			bytes, _ := r.res.median(name, "B/op")
			allocs, _ := r.res.median(name, "allocs/op")
			dAllocs, rCPU := "–", "–"
			if okA && v != "inner" {
				dAllocs = fmt.Sprintf("%+.0f", allocs-innerAllocs)
			}
			if v != "inner" {
				rCPU = r.vs(name, overheadName(n, "inner"), "cpu-ns/op")
			}
			fmt.Fprintf(b, "| %d | %s | %s | %s | %.0f | %.0f | %s | %s |\n", n, v,
				withInterval(fmt.Sprintf("%.0f", ns.Center), ns), withInterval(fmt.Sprintf("%.0f", cpu.Center), cpu),
				bytes, allocs, dAllocs, rCPU)
		}
		what := fmt.Sprintf("a query of %d row(s), never paused", n)
		const against = "the inner driver alone (in-memory, BenchmarkOverhead)"
		r.compare(against, what, overheadName(n, "jsonstream"), overheadName(n, "inner"), "cpu-ns/op", lowerIsBetter, duration)
		r.compare(against, what, overheadName(n, "jsonstream"), overheadName(n, "inner"), "allocs/op", lowerIsBetter, allocCount)
	}
	b.WriteString("\n")
	for _, n := range []int{1, 100} {
		js, ok1 := r.res.median(overheadName(n, "jsonstream"), "allocs/op")
		inner, ok2 := r.res.median(overheadName(n, "inner"), "allocs/op")
		arg, ok3 := r.res.median(overheadName(n, "jsonstream-stream-arg"), "allocs/op")
		paused, ok4 := r.res.median(overheadName(n, "jsonstream-paused-once"), "allocs/op")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			continue
		}
		verdict := "holds"
		if js-inner > 1 {
			verdict = "is refuted"
		}
		fmt.Fprintf(b, "With %d row(s): the never-paused budget of one allocation %s (%+.0f); "+
			"the Stream argument adds %+.0f (the Stream itself, and the argument slice that carries it to database/sql); "+
			"the first Pause adds %+.0f, which is the pause machinery appearing only when used.\n\n",
			n, verdict, js-inner, arg-js, paused-arg)
	}
}

func streamName(rows int, client string) string {
	return fmt.Sprintf("Stream/rows=%d/client=%s", rows, client)
}

func ceilingName(rows int, method string) string {
	return fmt.Sprintf("Ceiling/rows=%d/method=%s", rows, method)
}

// ceilingBest names the faster of the two ceiling methods at rows, by
// their median rows/s.
func (r *report) ceilingBest(rows int) (string, bool) {
	copyName, pgconnName := ceilingName(rows, "copy"), ceilingName(rows, "pgconn")
	c, ok1 := r.res.median(copyName, "rows/s")
	p, ok2 := r.res.median(pgconnName, "rows/s")
	switch {
	case ok1 && (!ok2 || c >= p):
		return copyName, true
	case ok2:
		return pgconnName, true
	}
	return "", false
}

func (r *report) streaming(b *strings.Builder, sizes []int) {
	b.WriteString("## Streaming\n\n")
	b.WriteString("`BenchmarkStream`: `SELECT data FROM v_entity ORDER BY id LIMIT n`, every row read and its " +
		"document looked at in place (`sql.RawBytes` through database/sql, `RawValues` with pgx native), " +
		"nothing decoded; *jsonstream* reads in its default mode, portal streams ([Portal mode](#portal-mode-the-default)). " +
		"*first row* is the time from the query call to the first row; *CPU/row* is the " +
		"client process's CPU time (user and system, all threads) per row, which is what the drivers " +
		"differ in: the server does nearly the same work for all of them (its CPU per row is in " +
		"[Complete results](#complete-results)). *of ceiling* is rows/s over the " +
		"faster [ceiling](#ceiling) at that size; above 100% the client's rounds happened to run faster " +
		"than the ceiling's, which is the machine's noise.\n\n")
	ratioTable := func(title, unit string, withCeiling bool) {
		b.WriteString(title + "\n\n| rows |")
		for _, c := range clientNames() {
			fmt.Fprintf(b, " %s |", display(c))
		}
		cols := len(clientNames())
		if withCeiling {
			b.WriteString(" ceiling |")
			cols++
		}
		b.WriteString("\n|---:|" + strings.Repeat("---:|", cols) + "\n")
		for _, n := range sizes {
			base := streamName(n, bench.LibPQ)
			if !r.measured(base) {
				continue
			}
			fmt.Fprintf(b, "| %s |", count(n))
			for _, c := range clientNames() {
				fmt.Fprintf(b, " %s |", r.vs(streamName(n, c), base, unit))
			}
			if withCeiling {
				ceil, ok := r.ceilingBest(n)
				fmt.Fprintf(b, " %s |", ifOK(ok, r.vs(ceil, base, unit)))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	ratioTable("Rows/s ÷ lib/pq, wall clock (higher is better):", "rows/s", true)
	ratioTable("Client CPU per row ÷ lib/pq (lower is better):", "cpu-ns/row", false)
	for _, n := range sizes {
		fmt.Fprintf(b, "### %s rows\n\n", count(n))
		b.WriteString("| client | rows/s | MB/s | first row | CPU/row | allocs/row | rows/s ÷ lib/pq | CPU/row ÷ lib/pq | of ceiling |\n" +
			"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		base := streamName(n, bench.LibPQ)
		ceilName, okCeil := r.ceilingBest(n)
		ceil, _ := r.res.median(ceilName, "rows/s")
		for _, c := range clientNames() {
			name := streamName(n, c)
			rs, ok := r.res.summary(name, "rows/s")
			if !ok {
				continue
			}
			mbs, _ := r.res.median(name, "MB/s")
			first, _ := r.res.summary(name, "ns/first-row")
			cpu, _ := r.res.summary(name, "cpu-ns/row")
			allocs, _ := r.res.median(name, "allocs/row")
			fmt.Fprintf(b, "| %s | %s | %.1f | %s | %s | %.3f | %s | %s | %s |\n", display(c),
				withInterval(rate(rs.Center), rs), mbs, withInterval(duration(first.Center), first),
				withInterval(duration(cpu.Center), cpu), allocs,
				r.vs(name, base, "rows/s"), r.vs(name, base, "cpu-ns/row"), ifOK(okCeil, percent(rs.Center/ceil)))
			if c != bench.Jsonstream {
				what := fmt.Sprintf("streaming %s rows", count(n))
				ours := streamName(n, bench.Jsonstream)
				r.compare("vs "+display(c), what, ours, name, "rows/s", higherIsBetter, rate)
				r.compare("vs "+display(c), what, ours, name, "cpu-ns/row", lowerIsBetter, duration)
				r.compare("vs "+display(c), what, ours, name, "ns/first-row", lowerIsBetter, duration)
				r.compare("vs "+display(c), what, ours, name, "allocs/row", lowerIsBetter, allocCount)
			}
		}
		b.WriteString("\n")
	}
}

func (r *report) ceiling(b *strings.Builder, sizes []int) {
	b.WriteString("## Ceiling\n\n")
	b.WriteString("`BenchmarkCeiling`: how fast the server hands out the same documents when the client does " +
		"nothing with them. *COPY* pours `COPY (query) TO STDOUT` into a counting `io.Discard`; *protocol* " +
		"reads the query's rows with pgx's protocol layer (pgconn) alone, in text format, looking at their " +
		"length only. On this machine the server shares the two cores with the client, and producing the " +
		"text of each jsonb document is most of its work, so the clients cannot fall far below this.\n\n")
	b.WriteString("| rows | COPY rows/s | COPY MB/s | protocol rows/s | protocol MB/s | protocol CPU/row |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range sizes {
		cs, ok1 := r.res.summary(ceilingName(n, "copy"), "rows/s")
		ps, ok2 := r.res.summary(ceilingName(n, "pgconn"), "rows/s")
		if !ok1 && !ok2 {
			continue
		}
		cm, _ := r.res.median(ceilingName(n, "copy"), "MB/s")
		pm, _ := r.res.median(ceilingName(n, "pgconn"), "MB/s")
		pc, _ := r.res.median(ceilingName(n, "pgconn"), "cpu-ns/row")
		fmt.Fprintf(b, "| %s | %s | %.1f | %s | %.1f | %s |\n", count(n), withInterval(rate(cs.Center), cs), cm,
			withInterval(rate(ps.Center), ps), pm, duration(pc))
	}
	b.WriteString("\n")
}

func earlyName(client string) string { return "EarlyClose/client=" + client }

func (r *report) earlyClose(b *strings.Builder) {
	b.WriteString("## Early close\n\n")
	fmt.Fprintf(b, "`BenchmarkEarlyClose`: a query for all %s rows, one row read, then Close. lib/pq and pgx "+
		"read the rest of the result to close it; jsonstream's default portal mode reads off the batches in "+
		"flight, closes the portal and keeps the connection. (The single-statement mode's CloseAuto waits %s "+
		"for the rest and then cuts the connection, which the next query pays for: see "+
		"[Early close, then the next query](#early-close-then-the-next-query).) *Per query* is all of it, "+
		"*close* the Close call alone.\n\n", count(r.cfg.rows), jsonstream.DefaultDrainTimeout)
	b.WriteString("| client | per query | close | per query ÷ lib/pq |\n|---|---:|---:|---:|\n")
	for _, c := range clientNames() {
		op, ok := r.res.summary(earlyName(c), "ns/op")
		if !ok {
			continue
		}
		cl, _ := r.res.summary(earlyName(c), "ns/close")
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", display(c), withInterval(duration(op.Center), op),
			withInterval(duration(cl.Center), cl), r.vs(earlyName(c), earlyName(bench.LibPQ), "ns/op"))
		if c != bench.Jsonstream {
			r.compare("vs "+display(c), "closing after 1 row", earlyName(bench.Jsonstream), earlyName(c), "ns/op", lowerIsBetter, duration)
		}
	}
	b.WriteString("\n")
}

func (r *report) peak(b *strings.Builder) {
	b.WriteString("## Peak memory\n\n")
	fmt.Fprintf(b, "Streaming all %s rows, each client in a fresh process (`report -peak-child`): *peak heap* "+
		"is the largest heap seen by sampling `%s` every %v, *peak RSS* the kernel's high-water mark "+
		"(VmHWM), *RSS before* the process's size once connected, before the query.\n\n",
		count(r.cfg.rows), heapMetric, samplePeriod)
	b.WriteString("| client | peak heap | peak RSS | RSS before | time | peak heap ÷ lib/pq | peak RSS ÷ lib/pq |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range clientNames() {
		name := peakName(c)
		heap, ok := r.res.summary(name, unitHeapPeak)
		if !ok {
			continue
		}
		rss, _ := r.res.summary(name, unitRSSPeak)
		start, _ := r.res.median(name, unitRSSStart)
		secs, _ := r.res.median(name, unitSeconds)
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f s | %s | %s |\n", display(c), withInterval(mib(heap.Center), heap),
			withInterval(mib(rss.Center), rss), mib(start), secs,
			r.vs(name, peakName(bench.LibPQ), unitHeapPeak), r.vs(name, peakName(bench.LibPQ), unitRSSPeak))
		if c != bench.Jsonstream {
			r.compare("vs "+display(c), "peak heap streaming "+count(r.cfg.rows)+" rows", peakName(bench.Jsonstream), name, unitHeapPeak, lowerIsBetter, mib)
			r.compare("vs "+display(c), "peak RSS streaming "+count(r.cfg.rows)+" rows", peakName(bench.Jsonstream), name, unitRSSPeak, lowerIsBetter, mib)
		}
	}
	b.WriteString("\n")
}

func decodeName(client string) string { return "Decode/client=" + client }

func (r *report) decode(b *strings.Builder) {
	b.WriteString("## Decoding into a Go struct\n\n")
	b.WriteString("`BenchmarkDecode`: every document decoded with `encoding/json` into a new `dataset.Entity` " +
		"(12 fields, a nested object, a string slice), by a hand-written loop per client, and by " +
		"`jsonstream.Each[dataset.Entity]`. Decoding costs several times what reading does, so the " +
		"clients' differences shrink here.\n\n")
	n := min(r.cfg.rows, 100_000)
	fmt.Fprintf(b, "%s rows per query.\n\n", count(n))
	b.WriteString("| client | rows/s | CPU/row | allocs/row | rows/s ÷ lib/pq | CPU/row ÷ lib/pq |\n|---|---:|---:|---:|---:|---:|\n")
	for _, c := range decodeClients {
		rs, ok := r.res.summary(decodeName(c), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.summary(decodeName(c), "cpu-ns/row")
		allocs, _ := r.res.median(decodeName(c), "allocs/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | %s | %s |\n", display(c), withInterval(rate(rs.Center), rs),
			withInterval(duration(cpu.Center), cpu), allocs,
			r.vs(decodeName(c), decodeName(bench.LibPQ), "rows/s"), r.vs(decodeName(c), decodeName(bench.LibPQ), "cpu-ns/row"))
	}
	for _, js := range []string{bench.Jsonstream, "jsonstream-each"} {
		for _, c := range clientNames() {
			if c == bench.Jsonstream {
				continue
			}
			what := "decoding"
			if js != bench.Jsonstream {
				what = "decoding with Each"
			}
			r.compare("vs "+display(c), what, decodeName(js), decodeName(c), "rows/s", higherIsBetter, rate)
			r.compare("vs "+display(c), what, decodeName(js), decodeName(c), "cpu-ns/row", lowerIsBetter, duration)
			r.compare("vs "+display(c), what, decodeName(js), decodeName(c), "allocs/row", lowerIsBetter, allocCount)
		}
	}
	b.WriteString("\n")
}

func ndjsonName(v string) string { return "NDJSON/client=" + v }

func (r *report) ndjson(b *strings.Builder) {
	b.WriteString("## NDJSON\n\n")
	b.WriteString("`BenchmarkNDJSON`: the same rows through jsonstream, written to `io.Discard` as " +
		"newline-delimited JSON by `jsonstream.WriteNDJSON` (which checks each document is valid JSON " +
		"and UTF-8), and by a loop that copies each document and a newline into the same 32 KiB buffer " +
		"unchecked.\n\n")
	fmt.Fprintf(b, "%s rows per query.\n\n", count(min(r.cfg.rows, 100_000)))
	b.WriteString("| variant | rows/s | CPU/row | allocs/row | rows/s ÷ raw copy | CPU/row ÷ raw copy |\n|---|---:|---:|---:|---:|---:|\n")
	for _, v := range ndjsonVariants {
		rs, ok := r.res.summary(ndjsonName(v), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.summary(ndjsonName(v), "cpu-ns/row")
		allocs, _ := r.res.median(ndjsonName(v), "allocs/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.3f | %s | %s |\n", display(v), withInterval(rate(rs.Center), rs),
			withInterval(duration(cpu.Center), cpu), allocs,
			r.vs(ndjsonName(v), ndjsonName("jsonstream-raw"), "rows/s"), r.vs(ndjsonName(v), ndjsonName("jsonstream-raw"), "cpu-ns/row"))
	}
	const against = "a raw copy of the documents"
	r.compare(against, "WriteNDJSON", ndjsonName("jsonstream-writendjson"), ndjsonName("jsonstream-raw"), "rows/s", higherIsBetter, rate)
	r.compare(against, "WriteNDJSON", ndjsonName("jsonstream-writendjson"), ndjsonName("jsonstream-raw"), "cpu-ns/row", lowerIsBetter, duration)
	b.WriteString("\n")
}

func typedName(decoder string) string { return "TypedDecode/decoder=" + decoder }

// typedNameV2 names a result of the GOEXPERIMENT=jsonv2 build.
func typedNameV2(decoder string) string { return jsonv2Prefix + typedName(decoder) }

func (r *report) typed(b *strings.Builder) {
	if !r.has("TypedDecode/") && !r.has(jsonv2Prefix+"TypedDecode/") {
		return
	}
	b.WriteString("## Typed decoding\n\n")
	n := min(r.cfg.rows, 300_000)
	fmt.Fprintf(b, "`BenchmarkTypedDecode`: the first %s documents through jsonstream, read as `sql.RawBytes` and "+
		"decoded into nothing (*raw drain*, the baseline), and decoded by `jsonstream.Each[T]` into a "+
		"struct of 9 fields, among them a nested object of 4, a string slice and a `time.Time`: with encoding/json, "+
		"Each's default, and with the decoders given by `WithUnmarshal`. Each decoder decodes one document "+
		"before the clock starts (sonic compiles code for the type on first use). `TestTypedDecodersAgree` "+
		"checks that all of them yield the same values. Client CPU per row holds steadier than rows/s "+
		"when the machine is busy.\n\n", count(n))
	r.typedTable(b, typedDecoders(), typedName)
	if r.jsonv2 && r.has(jsonv2Prefix+"TypedDecode/") {
		b.WriteString("Built with `GOEXPERIMENT=jsonv2`, which adds encoding/json/v2 and makes encoding/json itself " +
			"run on the v2 implementation; these processes ran in the same rounds as the ones above, " +
			"their order rotated with theirs:\n\n")
		r.typedTable(b, typedDecodersV2(), typedNameV2)
	}
	r.typedFindings(b)
}

// typedTable writes the figures of decoders, whose results name gives,
// with their ratios to the raw drain of the same build.
func (r *report) typedTable(b *strings.Builder, decoders []string, name func(string) string) {
	b.WriteString("| decoder | rows/s | CPU/row | allocs/row | B/row | rows/s ÷ raw drain | CPU/row ÷ raw drain |\n|---|---:|---:|---:|---:|---:|---:|\n")
	base := name(bench.RawDrain)
	for _, d := range decoders {
		rs, ok := r.res.summary(name(d), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.summary(name(d), "cpu-ns/row")
		allocs, _ := r.res.median(name(d), "allocs/row")
		bytes, _ := r.res.median(name(d), "B/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | %.0f | %s | %s |\n", display(d), withInterval(rate(rs.Center), rs),
			withInterval(duration(cpu.Center), cpu), allocs, bytes, r.vs(name(d), base, "rows/s"), r.vs(name(d), base, "cpu-ns/row"))
	}
	b.WriteString("\n")
}

// typedFindings writes what each decoder costs over the raw drain, and
// what the jsonv2 experiment changes in encoding/json.
func (r *report) typedFindings(b *strings.Builder) {
	over := func(name func(string) string, decoders []string) []string {
		raw, ok := r.res.median(name(bench.RawDrain), "cpu-ns/row")
		if !ok {
			return nil
		}
		var parts []string
		for _, d := range decoders {
			if d == bench.RawDrain {
				continue
			}
			if cpu, ok := r.res.median(name(d), "cpu-ns/row"); ok {
				parts = append(parts, fmt.Sprintf("%s %s", strings.TrimPrefix(display(d), "Each[T], "), duration(cpu-raw)))
			}
		}
		return parts
	}
	if parts := over(typedName, typedDecoders()); len(parts) > 0 {
		fmt.Fprintf(b, "- Client CPU per row over the raw drain's: %s.\n", strings.Join(parts, ", "))
	}
	if parts := over(typedNameV2, typedDecodersV2()); r.jsonv2 && len(parts) > 0 {
		fmt.Fprintf(b, "- The same under `GOEXPERIMENT=jsonv2`: %s.\n", strings.Join(parts, ", "))
	}
	v1, v2 := typedName(bench.EncodingJSON), typedNameV2(bench.EncodingJSON)
	a1, ok1 := r.res.median(v1, "allocs/row")
	a2, ok2 := r.res.median(v2, "allocs/row")
	b1, _ := r.res.median(v1, "B/row")
	b2, _ := r.res.median(v2, "B/row")
	if r.jsonv2 && ok1 && ok2 {
		fmt.Fprintf(b, "- encoding/json on the v2 implementation: %.3g allocations per row instead of %.3g, %.0f bytes "+
			"instead of %.0f; CPU per row %s of the v1 implementation's.\n", a2, a1, b2, b1, r.vs(v2, v1, "cpu-ns/row"))
	}
	b.WriteString("\n")
}

// vs is the cell comparing ours with theirs in unit: the ratio of their
// medians and the U test's p-value, with ~ when it finds no difference;
// 1.00× on theirs' own row, – when either was not measured.
func (r *report) vs(ours, theirs, unit string) string {
	if ours == theirs {
		if _, ok := r.res.summary(ours, unit); ok {
			return ratio(1)
		}
		return "–"
	}
	c, ok := r.res.compare(ours, theirs, unit)
	if !ok {
		return "–"
	}
	return c.String()
}

type direction bool

const (
	higherIsBetter direction = true
	lowerIsBetter  direction = false
)

// compare records a finding when ours' median is worse than theirs' in
// unit; the U test decides whether the rounds tell the two apart.
func (r *report) compare(against, what, ours, theirs, unit string, dir direction, format func(float64) string) {
	c, ok := r.res.compare(ours, theirs, unit)
	if !ok {
		return
	}
	a, t := c.ours.Center, c.theirs.Center
	var worse float64
	switch {
	case dir == higherIsBetter && a > 0:
		worse = t/a - 1
	case dir == lowerIsBetter && t > 0:
		worse = a/t - 1
	case dir == lowerIsBetter && a > 0:
		worse = math.Inf(1)
	}
	if worse <= 0 {
		return
	}
	label := unitLabels[unit]
	if label == "" {
		label = unit
	}
	text := fmt.Sprintf("%s, %s: %s against %s", what, label, format(a), format(t))
	per, isAllocs := strings.CutPrefix(unit, "allocs/")
	switch {
	case isAllocs:
		// A ratio of allocation counts near zero means nothing.
		text += fmt.Sprintf(" (%+.2f per %s", a-t, strings.ReplaceAll(per, "op", "query"))
	case math.IsInf(worse, 1):
		// Against zero there is no ratio; the two values say it all.
		text += " ("
	case worse >= 1 && dir == higherIsBetter:
		text += fmt.Sprintf(" (%.1f× slower", 1+worse)
	case worse >= 1:
		text += fmt.Sprintf(" (%.1f× as much", 1+worse)
	default:
		text += fmt.Sprintf(" (%.1f%% worse", 100*worse)
	}
	if !strings.HasSuffix(text, "(") {
		text += ", "
	}
	text += c.pValue()
	if !c.significant() {
		text += fmt.Sprintf("; intervals ±%s and ±%s", c.ours.PctRangeString(), c.theirs.PctRangeString())
	}
	text += ")"
	r.slower = append(r.slower, finding{against: against, text: text, noisy: !c.significant()})
}

var unitLabels = map[string]string{
	"rows/s":            "rows/s",
	"cpu-ns/row":        "client CPU per row",
	"server-cpu-ns/row": "server CPU per row",
	"cpu-ns/op":         "CPU per query",
	"ns/first-row":      "time to first row",
	"allocs/row":        "allocations per row",
	"allocs/op":         "allocations per query",
	"ns/op":             "time",
	unitHeapPeak:        "peak heap",
	unitRSSPeak:         "peak RSS",
}

func (r *report) slowerSection(b *strings.Builder) {
	b.WriteString("## Where jsonstream is slower\n\n")
	fmt.Fprintf(b, "Every comparison above in which the median of jsonstream (or one of its helpers) came out worse "+
		"than the other side's. The first list holds the differences the Mann-Whitney U test finds significant "+
		"(p < %.2f); the second those it does not, which this run cannot tell from the machine's noise however "+
		"large the gap between the medians. CPU per row and allocations are the steadiest measures here; "+
		"wall-clock rates move with everything else the machine runs. With this many comparisons at alpha %.2f, "+
		"about one in twenty of those with no real difference still lands in the first list.\n\n",
		thresholds.CompareAlpha, thresholds.CompareAlpha)
	var clean, noisy []finding
	for _, f := range r.slower {
		if f.noisy {
			noisy = append(noisy, f)
		} else {
			clean = append(clean, f)
		}
	}
	b.WriteString("### Significant\n\n")
	writeFindings(b, clean)
	b.WriteString("### Not significant\n\n")
	writeFindings(b, noisy)
}

func writeFindings(b *strings.Builder, fs []finding) {
	if len(fs) == 0 {
		b.WriteString("None.\n\n")
		return
	}
	var order []string
	groups := map[string][]string{}
	for _, f := range fs {
		if _, ok := groups[f.against]; !ok {
			order = append(order, f.against)
		}
		groups[f.against] = append(groups[f.against], f.text)
	}
	for _, g := range order {
		fmt.Fprintf(b, "**Against %s**\n\n", strings.TrimPrefix(g, "vs "))
		for _, t := range groups[g] {
			fmt.Fprintf(b, "- %s\n", t)
		}
		b.WriteString("\n")
	}
}

func (r *report) statistics(b *strings.Builder) {
	b.WriteString("## Statistics\n\n")
	fmt.Fprintf(b, "As benchstat computes them, with golang.org/x/perf/benchmath and no assumption about how the "+
		"rounds are distributed (`AssumeNothing`). A figure is the median of its %d rounds; ±x%% is the larger "+
		"distance from the median to the ends of its 95%% confidence interval: an interval drawn this way "+
		"holds the median of the figure's distribution 95 times out of 100. It needs %d rounds to be bounded, "+
		"and spans all rounds from the slowest to the fastest until there are 9. Two figures are compared "+
		"with a Mann-Whitney U test on their rounds: *p* is the probability of rounds at least this far apart "+
		"if both sides came from one distribution. Below %.2f the difference is taken as real and the ratio "+
		"stands alone with its p; otherwise it is marked ~, which says that this run cannot tell the two "+
		"apart, not that they are equal. With %d rounds a side the least p the test can give is about %.3f. "+
		"Figures without an interval (MB/s, allocations, bytes, sessions) are medians; allocation counts "+
		"barely vary between rounds.\n\n",
		r.cfg.count, roundsForInterval, thresholds.CompareAlpha, r.cfg.count, minUTestP(r.cfg.count))
}

func (r *report) reproduce(b *strings.Builder) {
	b.WriteString("## How to reproduce\n\n")
	b.WriteString("Needs Go and the PostgreSQL server binaries (initdb, pg_ctl, postgres; `apt-get install postgresql`). From the repository root:\n\n```sh\n")
	args := fmt.Sprintf("-rows %d -count %d", r.cfg.rows, r.cfg.count)
	if r.cfg.benchtime != "1s" {
		args += " -benchtime " + r.cfg.benchtime
	}
	fmt.Fprintf(b, "make bench ARGS='%s'   # this report: %s here\n", args, minutes(r.took))
	b.WriteString("make bench ARGS='-dsn \"host=... user=... dbname=...\"'   # against a server of yours; loads table entity and view v_entity\n")
	b.WriteString("make bench-smoke   # every benchmark once, small dataset: what CI runs\n```\n\n")
	b.WriteString("One benchmark by hand, on a server that has the dataset (the report loads it; so does the first benchmark that needs it):\n\n```sh\n")
	b.WriteString("cd bench\n")
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkOverhead' -count %d   # no server needed; with the observed variants\n", defaultRounds)
	fmt.Fprintf(b, "(cd ../otel && go test -run '^$' -bench 'BenchmarkObserveStream' -count %d)   # the OpenTelemetry observer\n", defaultRounds)
	b.WriteString("export JSONSTREAM_BENCH_DSN='host=127.0.0.1 port=5432 user=postgres sslmode=disable'\n")
	fmt.Fprintf(b, "export JSONSTREAM_BENCH_ROWS=%d\n", r.cfg.rows)
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkStream/rows=%d/' -count %d\n", r.sizes()[len(r.sizes())-1], defaultRounds)
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkEarlyClose$|BenchmarkCeiling|BenchmarkDecode|BenchmarkNDJSON|BenchmarkTypedDecode' -count %d\n", defaultRounds)
	fmt.Fprintf(b, "GOEXPERIMENT=jsonv2 go test -run '^$' -bench 'BenchmarkTypedDecode' -count %d   # adds decoder=json-v2\n", defaultRounds)
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkEarlyCloseNext|BenchmarkEarlyCloseTx|BenchmarkEarlyCloseBegin|BenchmarkChurn|BenchmarkFetch|BenchmarkQueryRow$|BenchmarkSelectOne|BenchmarkProxy' -count %d\n", defaultRounds)
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkQueryRow(Paired|Null)' -benchtime %s -count %d   # one ratio per round; Null: lib/pq beside lib/pq\n", bench.PairedBenchtime, bench.PairedRounds)
	fmt.Fprintf(b, "go run ./cmd/report -peak-child jsonstream -dsn \"$JSONSTREAM_BENCH_DSN\" -rows %d\n```\n\n", r.cfg.rows)
	b.WriteString("Without `JSONSTREAM_BENCH_DSN` the benchmarks start a throwaway server of their own and load the " +
		"dataset into it (about ten seconds for a million documents); `-short` uses 10,000.\n")
}

// Formatting.

func count(n int) string {
	s := fmt.Sprint(n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func rate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v < 10 && v > 0:
		// Rates of a query that takes seconds.
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func duration(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

func mib(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }

func minutes(d time.Duration) string {
	if d < time.Minute {
		return "under a minute"
	}
	return fmt.Sprintf("%.0f minutes", d.Minutes())
}

func ratio(v float64) string {
	if v > 0 && v < 0.01 {
		// Two significant digits, where two decimals would show 0.00×.
		return strconv.FormatFloat(v, 'g', 2, 64) + "×"
	}
	return fmt.Sprintf("%.2f×", v)
}

func percent(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }

// withInterval is s, a formatted median, with the confidence interval of
// its rounds.
func withInterval(s string, st summary) string {
	if iv := st.interval(); iv != "" {
		return s + " " + iv
	}
	return s
}

func ifOK(ok bool, s string) string {
	if !ok {
		return "–"
	}
	return s
}

func allocCount(v float64) string { return fmt.Sprintf("%.3g", v) }
