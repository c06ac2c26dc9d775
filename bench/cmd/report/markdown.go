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

// noise is how much worse than another client jsonstream must be for the
// report to call it slower: below it, rounds on this machine differ by as
// much as the clients do.
const noise = 0.03

// report turns the results into RESULTS.md.
type report struct {
	cfg     config
	machine *machine
	res     *results
	took    time.Duration
	loads   []float64
	// slower collects, while the tables are written, every comparison in
	// which jsonstream came out worse by more than noise.
	slower []finding
}

// finding is one comparison that jsonstream lost.
type finding struct {
	against string // whom jsonstream lost to, as a section title
	text    string
	// noisy is set when the difference is within the spread of the
	// rounds, so that it may be the machine rather than the code.
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
	r.streaming(&body, sizes)
	r.ceiling(&body, sizes)
	r.earlyClose(&body)
	r.peak(&body)
	r.decode(&body)
	r.ndjson(&body)
	r.typed(&body)
	r.cursor(&body)

	fmt.Fprintf(&b, "# jsonstream benchmarks\n\n")
	fmt.Fprintf(&b, "jsonstream against lib/pq (which it wraps), pgx through database/sql and pgx native, "+
		"streaming up to %s JSON documents of about %.0f bytes (`SELECT data FROM v_entity ORDER BY id`) "+
		"from a local PostgreSQL %s. Every number is the median of %d rounds; ± is half the spread "+
		"between the fastest and the slowest round. Ratios against lib/pq are the point: "+
		"absolute times depend on this machine. Written by `make bench` (`cd bench && go run ./cmd/report`) "+
		"on %s in %s.\n\n",
		count(r.machine.docs), r.machine.docBytes, r.machine.postgres, r.cfg.count,
		time.Now().UTC().Format("2006-01-02"), minutes(r.took))

	r.summary(&b, largest)
	r.machineSection(&b)
	b.WriteString(body.String())
	r.slowerSection(&b)
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
			if v, ok := r.res.median(name(c), unit); ok && c != bench.LibPQ {
				parts = append(parts, fmt.Sprintf("%s %s", display(c), ratio(v/base)))
			}
		}
		return strings.Join(parts, ", "), true
	}
	stream := func(c string) string { return streamName(largest, c) }
	if s, ok := against(stream, "rows/s", rate); ok {
		if ceil, ok := r.ceilingRate(largest); ok {
			base, _ := r.res.median(streamName(largest, bench.LibPQ), "rows/s")
			s += ", the server's ceiling " + ratio(ceil/base)
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
		fmt.Fprintf(b, "- **Closing after 1 row of %s**: jsonstream %s (query, row, close and the reconnect the close costs), %s.\n",
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
	r.cursorSummary(b)
	noisy := 0
	for _, f := range r.slower {
		if f.noisy {
			noisy++
		}
	}
	fmt.Fprintf(b, "- **Where jsonstream is slower**: %d comparisons beyond this run's noise, %d more within it; "+
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
		"the clients in an order rotated from round to round; go test -benchtime %s |\n\n", r.cfg.count, r.cfg.benchtime)
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
		innerCPU, okCPU := r.res.median(overheadName(n, "inner"), "cpu-ns/op")
		innerAllocs, okA := r.res.median(overheadName(n, "inner"), "allocs/op")
		for _, v := range overheadVariants {
			name := overheadName(n, v)
			ns, ok := r.res.stat(name, "ns/op")
			if !ok {
				continue
			}
			cpu, _ := r.res.stat(name, "cpu-ns/op")
			bytes, _ := r.res.median(name, "B/op")
			allocs, _ := r.res.median(name, "allocs/op")
			dAllocs, rCPU := "–", "–"
			if okA && v != "inner" {
				dAllocs = fmt.Sprintf("%+.0f", allocs-innerAllocs)
			}
			if okCPU && v != "inner" {
				rCPU = ratio(cpu.median / innerCPU)
			}
			fmt.Fprintf(b, "| %d | %s | %s | %s | %.0f | %.0f | %s | %s |\n", n, v,
				withSpread(fmt.Sprintf("%.0f", ns.median), ns), withSpread(fmt.Sprintf("%.0f", cpu.median), cpu),
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

// ceilingRate is the faster of the two ceiling methods at rows.
func (r *report) ceilingRate(rows int) (float64, bool) {
	c, ok1 := r.res.median(ceilingName(rows, "copy"), "rows/s")
	p, ok2 := r.res.median(ceilingName(rows, "pgconn"), "rows/s")
	return max(c, p), ok1 || ok2
}

func (r *report) streaming(b *strings.Builder, sizes []int) {
	b.WriteString("## Streaming\n\n")
	b.WriteString("`BenchmarkStream`: `SELECT data FROM v_entity ORDER BY id LIMIT n`, every row read and its " +
		"document looked at in place (`sql.RawBytes` through database/sql, `RawValues` with pgx native), " +
		"nothing decoded. *first row* is the time from the query call to the first row; *CPU/row* is the " +
		"client process's CPU time (user and system, all threads) per row, which is what the drivers " +
		"differ in: the server does the same work for all of them. *of ceiling* is rows/s over the " +
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
			base, ok := r.res.median(streamName(n, bench.LibPQ), unit)
			if !ok || base == 0 {
				continue
			}
			fmt.Fprintf(b, "| %s |", count(n))
			for _, c := range clientNames() {
				v, ok := r.res.median(streamName(n, c), unit)
				fmt.Fprintf(b, " %s |", ifOK(ok, ratio(v/base)))
			}
			if withCeiling {
				ceil, ok := r.ceilingRate(n)
				fmt.Fprintf(b, " %s |", ifOK(ok, ratio(ceil/base)))
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
		base, okBase := r.res.median(streamName(n, bench.LibPQ), "rows/s")
		baseCPU, okCPU := r.res.median(streamName(n, bench.LibPQ), "cpu-ns/row")
		ceil, okCeil := r.ceilingRate(n)
		for _, c := range clientNames() {
			name := streamName(n, c)
			rs, ok := r.res.stat(name, "rows/s")
			if !ok {
				continue
			}
			mbs, _ := r.res.median(name, "MB/s")
			first, _ := r.res.stat(name, "ns/first-row")
			cpu, _ := r.res.stat(name, "cpu-ns/row")
			allocs, _ := r.res.median(name, "allocs/row")
			fmt.Fprintf(b, "| %s | %s | %.1f | %s | %s | %.3f | %s | %s | %s |\n", display(c),
				withSpread(rate(rs.median), rs), mbs, withSpread(duration(first.median), first),
				withSpread(duration(cpu.median), cpu), allocs,
				ifOK(okBase, ratio(rs.median/base)), ifOK(okCPU, ratio(cpu.median/baseCPU)), ifOK(okCeil, percent(rs.median/ceil)))
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
		cs, ok1 := r.res.stat(ceilingName(n, "copy"), "rows/s")
		ps, ok2 := r.res.stat(ceilingName(n, "pgconn"), "rows/s")
		if !ok1 && !ok2 {
			continue
		}
		cm, _ := r.res.median(ceilingName(n, "copy"), "MB/s")
		pm, _ := r.res.median(ceilingName(n, "pgconn"), "MB/s")
		pc, _ := r.res.median(ceilingName(n, "pgconn"), "cpu-ns/row")
		fmt.Fprintf(b, "| %s | %s | %.1f | %s | %.1f | %s |\n", count(n), withSpread(rate(cs.median), cs), cm,
			withSpread(rate(ps.median), ps), pm, duration(pc))
	}
	b.WriteString("\n")
}

func earlyName(client string) string { return "EarlyClose/client=" + client }

func (r *report) earlyClose(b *strings.Builder) {
	b.WriteString("## Early close\n\n")
	fmt.Fprintf(b, "`BenchmarkEarlyClose`: a query for all %s rows, one row read, then Close. lib/pq and pgx "+
		"read the rest of the result to close it; jsonstream's default CloseAuto waits %s for the rest and "+
		"then cuts the connection, which stops the query on the server. The connection is lost, so each "+
		"jsonstream query here also opens a new one: *per query* includes that, *close* is the Close call "+
		"alone.\n\n", count(r.cfg.rows), jsonstream.DefaultDrainTimeout)
	b.WriteString("| client | per query | close | per query ÷ lib/pq |\n|---|---:|---:|---:|\n")
	base, okBase := r.res.median(earlyName(bench.LibPQ), "ns/op")
	for _, c := range clientNames() {
		op, ok := r.res.stat(earlyName(c), "ns/op")
		if !ok {
			continue
		}
		cl, _ := r.res.stat(earlyName(c), "ns/close")
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", display(c), withSpread(duration(op.median), op),
			withSpread(duration(cl.median), cl), ifOK(okBase, ratio(op.median/base)))
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
	baseHeap, okH := r.res.median(peakName(bench.LibPQ), unitHeapPeak)
	baseRSS, okR := r.res.median(peakName(bench.LibPQ), unitRSSPeak)
	for _, c := range clientNames() {
		name := peakName(c)
		heap, ok := r.res.median(name, unitHeapPeak)
		if !ok {
			continue
		}
		rss, _ := r.res.median(name, unitRSSPeak)
		start, _ := r.res.median(name, unitRSSStart)
		secs, _ := r.res.median(name, unitSeconds)
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f s | %s | %s |\n", display(c), mib(heap), mib(rss), mib(start), secs,
			ifOK(okH, ratio(heap/baseHeap)), ifOK(okR, ratio(rss/baseRSS)))
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
	base, okBase := r.res.median(decodeName(bench.LibPQ), "rows/s")
	baseCPU, okCPU := r.res.median(decodeName(bench.LibPQ), "cpu-ns/row")
	for _, c := range decodeClients {
		rs, ok := r.res.stat(decodeName(c), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.stat(decodeName(c), "cpu-ns/row")
		allocs, _ := r.res.median(decodeName(c), "allocs/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | %s | %s |\n", display(c), withSpread(rate(rs.median), rs),
			withSpread(duration(cpu.median), cpu), allocs, ifOK(okBase, ratio(rs.median/base)), ifOK(okCPU, ratio(cpu.median/baseCPU)))
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
	base, okBase := r.res.median(ndjsonName("jsonstream-raw"), "rows/s")
	baseCPU, okCPU := r.res.median(ndjsonName("jsonstream-raw"), "cpu-ns/row")
	for _, v := range ndjsonVariants {
		rs, ok := r.res.stat(ndjsonName(v), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.stat(ndjsonName(v), "cpu-ns/row")
		allocs, _ := r.res.median(ndjsonName(v), "allocs/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.3f | %s | %s |\n", display(v), withSpread(rate(rs.median), rs),
			withSpread(duration(cpu.median), cpu), allocs, ifOK(okBase, ratio(rs.median/base)), ifOK(okCPU, ratio(cpu.median/baseCPU)))
	}
	const against = "a raw copy of the documents"
	r.compare(against, "WriteNDJSON", ndjsonName("jsonstream-writendjson"), ndjsonName("jsonstream-raw"), "rows/s", higherIsBetter, rate)
	r.compare(against, "WriteNDJSON", ndjsonName("jsonstream-writendjson"), ndjsonName("jsonstream-raw"), "cpu-ns/row", lowerIsBetter, duration)
	b.WriteString("\n")
}

func typedName(decoder string) string { return "TypedDecode/decoder=" + decoder }

func (r *report) typed(b *strings.Builder) {
	b.WriteString("## Typed decoding\n\n")
	b.WriteString("`BenchmarkTypedDecode`: the same rows through jsonstream, read as `sql.RawBytes` and " +
		"decoded into nothing (*raw drain*, the baseline), and decoded by `jsonstream.Each[T]` into a " +
		"struct of 9 fields, among them a nested object of 4, a string slice and a `time.Time`: with encoding/json, " +
		"Each's default, and with the decoders given by `WithUnmarshal`. `TestTypedDecodersAgree` " +
		"checks that all of them yield the same values. Under `GOEXPERIMENT=jsonv2` encoding/json/v2 " +
		"joins them, and encoding/json itself runs on the v2 implementation.\n\n")
	n := min(r.cfg.rows, 300_000)
	fmt.Fprintf(b, "%s rows per query.\n\n", count(n))
	b.WriteString("| decoder | rows/s | CPU/row | allocs/row | B/row | rows/s ÷ raw drain | CPU/row ÷ raw drain |\n|---|---:|---:|---:|---:|---:|---:|\n")
	base, okBase := r.res.median(typedName(bench.RawDrain), "rows/s")
	baseCPU, okCPU := r.res.median(typedName(bench.RawDrain), "cpu-ns/row")
	for _, d := range typedDecoders() {
		rs, ok := r.res.stat(typedName(d), "rows/s")
		if !ok {
			continue
		}
		cpu, _ := r.res.stat(typedName(d), "cpu-ns/row")
		allocs, _ := r.res.median(typedName(d), "allocs/row")
		bytes, _ := r.res.median(typedName(d), "B/row")
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | %.0f | %s | %s |\n", display(d), withSpread(rate(rs.median), rs),
			withSpread(duration(cpu.median), cpu), allocs, bytes, ifOK(okBase, ratio(rs.median/base)), ifOK(okCPU, ratio(cpu.median/baseCPU)))
	}
	b.WriteString("\n")
}

type direction bool

const (
	higherIsBetter direction = true
	lowerIsBetter  direction = false
)

// compare records a finding when ours is worse than theirs by more than
// noise in unit.
func (r *report) compare(against, what, ours, theirs, unit string, dir direction, format func(float64) string) {
	a, ok1 := r.res.stat(ours, unit)
	t, ok2 := r.res.stat(theirs, unit)
	if !ok1 || !ok2 {
		return
	}
	var worse float64
	switch {
	case dir == higherIsBetter && a.median > 0:
		worse = t.median/a.median - 1
	case dir == lowerIsBetter && t.median > 0:
		worse = a.median/t.median - 1
	case dir == lowerIsBetter && a.median > 0:
		worse = math.Inf(1)
	}
	if worse <= noise {
		return
	}
	label := unitLabels[unit]
	if label == "" {
		label = unit
	}
	text := fmt.Sprintf("%s, %s: %s against %s", what, label, format(a.median), format(t.median))
	per, isAllocs := strings.CutPrefix(unit, "allocs/")
	switch {
	case isAllocs:
		// A ratio of allocation counts near zero means nothing.
		text += fmt.Sprintf(" (%+.2f per %s)", a.median-t.median, strings.ReplaceAll(per, "op", "query"))
	case math.IsInf(worse, 1):
		// Against zero there is no ratio; the two values say it all.
	case worse >= 1 && dir == higherIsBetter:
		text += fmt.Sprintf(" (%.1f× slower)", 1+worse)
	case worse >= 1:
		text += fmt.Sprintf(" (%.1f× as much)", 1+worse)
	default:
		text += fmt.Sprintf(" (%.1f%% worse)", 100*worse)
	}
	// Half of each side's spread: a difference inside it could be the
	// machine rather than the code.
	// Half of each side's spread: a difference inside their sum could be
	// the machine rather than the code.
	noisy := worse <= (a.spread+t.spread)/2
	if noisy {
		text += fmt.Sprintf(", within the spread of the rounds (±%.0f%% and ±%.0f%%)", 50*a.spread, 50*t.spread)
	}
	r.slower = append(r.slower, finding{against: against, text: text, noisy: noisy})
}

var unitLabels = map[string]string{
	"rows/s":       "rows/s",
	"cpu-ns/row":   "client CPU per row",
	"cpu-ns/op":    "CPU per query",
	"ns/first-row": "time to first row",
	"allocs/row":   "allocations per row",
	"allocs/op":    "allocations per query",
	"ns/op":        "time",
	unitHeapPeak:   "peak heap",
	unitRSSPeak:    "peak RSS",
}

func (r *report) slowerSection(b *strings.Builder) {
	b.WriteString("## Where jsonstream is slower\n\n")
	fmt.Fprintf(b, "Every comparison above in which jsonstream (or one of its helpers) came out worse than the "+
		"other side by more than %.0f%%, computed from the medians. The first list holds the differences "+
		"larger than the spread of the rounds; the second those within it, which this run cannot tell from "+
		"the machine's noise. CPU per row and allocations are the steadiest measures here; wall-clock "+
		"rates move with everything else the machine runs.\n\n", 100*noise)
	var clean, noisy []finding
	for _, f := range r.slower {
		if f.noisy {
			noisy = append(noisy, f)
		} else {
			clean = append(clean, f)
		}
	}
	b.WriteString("### Beyond the noise\n\n")
	writeFindings(b, clean)
	b.WriteString("### Within the noise\n\n")
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
	b.WriteString("go test -run '^$' -bench 'BenchmarkOverhead' -count 5   # no server needed\n")
	b.WriteString("export JSONSTREAM_BENCH_DSN='host=127.0.0.1 port=5432 user=postgres sslmode=disable'\n")
	fmt.Fprintf(b, "export JSONSTREAM_BENCH_ROWS=%d\n", r.cfg.rows)
	fmt.Fprintf(b, "go test -run '^$' -bench 'BenchmarkStream/rows=%d/' -count 5\n", r.sizes()[len(r.sizes())-1])
	b.WriteString("go test -run '^$' -bench 'BenchmarkEarlyClose$|BenchmarkCeiling|BenchmarkDecode|BenchmarkNDJSON|BenchmarkTypedDecode' -count 5\n")
	b.WriteString("go test -run '^$' -bench 'BenchmarkEarlyCloseNext|BenchmarkEarlyCloseTx|BenchmarkChurn|BenchmarkFetch|BenchmarkQueryRow|BenchmarkSelectOne|BenchmarkProxy' -count 5\n")
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

func withSpread(s string, st stat) string {
	if st.n < 2 {
		return s
	}
	return fmt.Sprintf("%s ±%.0f%%", s, 50*st.spread)
}

func ifOK(ok bool, s string) string {
	if !ok {
		return "–"
	}
	return s
}

func allocCount(v float64) string { return fmt.Sprintf("%.3g", v) }
