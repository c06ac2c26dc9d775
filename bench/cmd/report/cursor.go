package main

import (
	"fmt"
	"strings"

	"github.com/jsonstream/jsonstream/bench"
)

// The modes' section: jsonstream's cursor modes (WithFetchSize) beside
// its default portal mode, its single-statement mode (whose early Close
// cuts the connection) and lib/pq and pgx, with the goals the cursor
// modes are held to. The portal mode's goals are in portal.go.

// Goals the cursor modes are held to; the report says whether this run
// met each.
const (
	goalEarlyCloseNext = 2e6 // ns: early close and the next query, FetchAuto
	goalEarlyCloseTx   = 5e6 // ns: early close inside BeginTx
	goalChurnFactor    = 10  // queries/s over the single-statement mode's
	goalDrainLoss      = 0.05
	goalSelectOne      = 0.02
)

func init() {
	displayNames[bench.JsonstreamSingle] = "jsonstream single statement"
	displayNames[bench.JsonstreamCursorAuto] = "jsonstream cursor, FetchAuto"
	displayNames[bench.JsonstreamCursorFixed] = fmt.Sprintf("jsonstream cursor, fetch %d", bench.FixedFetchSize)
}

// modeName is how the modes' section names jsonstream's clients: by
// their mode, since the section is about modes.
func modeName(client string) string {
	switch client {
	case bench.Jsonstream:
		return "jsonstream portal (default)"
	case bench.JsonstreamSingle:
		return "jsonstream single statement (cut)"
	}
	return display(client)
}

// shortName names a client in a column header, where the section's
// context says the rest.
func shortName(client string) string {
	switch client {
	case bench.Jsonstream:
		return "portal (default)"
	case bench.JsonstreamSingle:
		return "single statement"
	case bench.JsonstreamCursorAuto:
		return "FetchAuto"
	case bench.JsonstreamCursorFixed:
		return fmt.Sprintf("fetch %d", bench.FixedFetchSize)
	}
	return display(client)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "**not met**"
}

// sessions formats a count of new server sessions.
func sessions(v float64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%.2f", v)
}

// measured reports whether the benchmark name has results.
func (r *report) measured(name string) bool {
	_, ok := r.res.samples[name]
	return ok
}

// has reports whether any benchmark whose name starts with prefix has
// results.
func (r *report) has(prefix string) bool {
	for name := range r.res.samples {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

func (r *report) cursor(b *strings.Builder) {
	if !r.has("EarlyCloseNext/") && !r.has("EarlyCloseTx/") && !r.has("EarlyCloseBegin/") && !r.has("Churn/") &&
		!r.has("Fetch/") && !r.has("QueryRow/") && !r.has("SelectOne/") && !r.has("Proxy/") {
		return
	}
	b.WriteString("## Cursor mode: stopping early without losing the connection\n\n")
	fmt.Fprintf(b, "`WithFetchSize(n)` runs a query as `DECLARE … NO SCROLL CURSOR` and `FETCH n` batches "+
		"inside a transaction, so that an early Close reads off the batch in flight and closes the cursor "+
		"instead of cutting the connection. *cursor, FetchAuto* lets the batches grow; *cursor, fetch %d* "+
		"keeps them fixed. They are set beside jsonstream's other two modes: *portal (default)*, what "+
		"`sql.Open(\"jsonstream\", dsn)` does for reads ([Portal mode](#portal-mode-the-default)), and "+
		"*single statement (cut)*, `WithStreamMode(ModeSingle)`: lib/pq's protocol, whose early Close "+
		"(CloseAuto) cuts the connection. *New sessions* are the connections the server started, from "+
		"`pg_stat_database.sessions` read before and after over a connection of its own.\n\n", bench.FixedFetchSize)
	r.cursorEarlyClose(b)
	r.cursorTx(b)
	r.cursorBegin(b)
	r.cursorChurn(b)
	r.cursorDrain(b)
	r.cursorQueryRow(b)
	r.selectOne(b)
	r.cursorProxy(b)
}

func earlyNextName(client string) string { return "EarlyCloseNext/client=" + client }

// earlyCloseTable writes the rows of an early-close-and-next-query table
// for clients, with name giving each one's benchmark.
func (r *report) earlyCloseTable(b *strings.Builder, clients []string, name func(string) string, base string) {
	b.WriteString("| client | per query | close | next query | new sessions per query | per query ÷ " + shortName(base) + " |\n|---|---:|---:|---:|---:|---:|\n")
	for _, c := range clients {
		op, ok := r.res.summary(name(c), "ns/op")
		if !ok {
			continue
		}
		cl, _ := r.res.summary(name(c), "ns/close")
		next, _ := r.res.summary(name(c), "ns/next")
		s, okS := r.res.median(name(c), "sessions/op")
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", modeName(c), withInterval(duration(op.Center), op),
			withInterval(duration(cl.Center), cl), withInterval(duration(next.Center), next),
			ifOK(okS, sessions(s)), r.vs(name(c), name(base), "ns/op"))
	}
	b.WriteString("\n")
}

func (r *report) cursorEarlyClose(b *strings.Builder) {
	if !r.has("EarlyCloseNext/") {
		return
	}
	b.WriteString("### Early close, then the next query\n\n")
	fmt.Fprintf(b, "`BenchmarkEarlyCloseNext`: a query for all %s rows, one row read, Close, then "+
		"`SELECT 1` on the same pool (or connection, for pgx native). *Per query* is all of it: "+
		"what giving up on a large result costs the application.\n\n", count(r.cfg.rows))
	r.earlyCloseTable(b, bench.EarlyCloseNextClients, earlyNextName, bench.LibPQ)
	op, ok := r.res.median(earlyNextName(bench.JsonstreamCursorAuto), "ns/op")
	s, okS := r.res.median(earlyNextName(bench.JsonstreamCursorAuto), "sessions/op")
	if ok && okS {
		fmt.Fprintf(b, "Goal, FetchAuto: at most %s per query with no new session: %s (%s, %s new sessions per query).\n\n",
			duration(goalEarlyCloseNext), verdict(op <= goalEarlyCloseNext && s == 0), duration(op), sessions(s))
	}
}

func earlyTxName(client string) string { return "EarlyCloseTx/client=" + client }

func (r *report) cursorTx(b *strings.Builder) {
	if !r.has("EarlyCloseTx/") {
		return
	}
	b.WriteString("### Early close inside a transaction\n\n")
	fmt.Fprintf(b, "`BenchmarkEarlyCloseTx`: `BeginTx`, a query for all %s rows, one row read, Close, "+
		"Commit. The single-statement mode cannot cut a connection that holds a transaction, so it "+
		"reads the rest as lib/pq does; the cursor modes close the cursor, and the portal mode its "+
		"portal, and leave the transaction to its owner.\n\n", count(r.cfg.rows))
	r.txTable(b, bench.EarlyCloseTxClients, earlyTxName)
}

func earlyBeginName(client string) string { return "EarlyCloseBegin/client=" + client }

func (r *report) cursorBegin(b *strings.Builder) {
	if !r.has("EarlyCloseBegin/") {
		return
	}
	b.WriteString("### Early close inside a transaction begun with Exec(\"BEGIN\")\n\n")
	fmt.Fprintf(b, "`BenchmarkEarlyCloseBegin`: on one `sql.Conn`, `Exec(\"BEGIN\")`, a query for all %s rows, "+
		"one row read, Close, `Exec(\"COMMIT\")`. database/sql does not know of this transaction: jsonstream "+
		"learns of it from the server, and must not cut the connection or end the transaction to stop "+
		"early.\n\n", count(r.cfg.rows))
	r.txTable(b, bench.EarlyCloseBeginClients, earlyBeginName)
}

// txTable writes the table of an early close inside a transaction for
// clients, with name giving each one's benchmark, and the cursor modes'
// goal.
func (r *report) txTable(b *strings.Builder, clients []string, name func(string) string) {
	b.WriteString("| client | per transaction | close | new sessions per transaction | ÷ lib/pq |\n|---|---:|---:|---:|---:|\n")
	for _, c := range clients {
		op, ok := r.res.summary(name(c), "ns/op")
		if !ok {
			continue
		}
		cl, _ := r.res.summary(name(c), "ns/close")
		s, okS := r.res.median(name(c), "sessions/op")
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", modeName(c), withInterval(duration(op.Center), op),
			withInterval(duration(cl.Center), cl), ifOK(okS, sessions(s)), r.vs(name(c), name(bench.LibPQ), "ns/op"))
	}
	b.WriteString("\n")
	var parts []string
	for _, c := range []string{bench.JsonstreamCursorAuto, bench.JsonstreamCursorFixed} {
		if op, ok := r.res.median(name(c), "ns/op"); ok {
			parts = append(parts, fmt.Sprintf("%s %s (%s)", display(c), verdict(op <= goalEarlyCloseTx), duration(op)))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "Goal, cursor modes: at most %s per transaction: %s.\n\n", duration(goalEarlyCloseTx), strings.Join(parts, "; "))
	}
}

func churnName(client string) string { return "Churn/client=" + client }

func (r *report) cursorChurn(b *strings.Builder) {
	if !r.has("Churn/") {
		return
	}
	b.WriteString("### Churn\n\n")
	fmt.Fprintf(b, "`BenchmarkChurn`: %d goroutines on one pool (%d idle connections kept), each looping "+
		"\"query all %s rows, read %d, Close\" for %v; the queries still running then are finished "+
		"and counted.\n\n", bench.ChurnWorkers, bench.ChurnWorkers, count(r.cfg.rows), bench.ChurnRows, bench.ChurnTime)
	b.WriteString("| client | queries/s | new sessions/s | queries/s ÷ single statement |\n|---|---:|---:|---:|\n")
	single := bench.JsonstreamSingle
	base, okBase := r.res.median(churnName(single), "queries/s")
	for _, c := range bench.ChurnClients {
		q, ok := r.res.summary(churnName(c), "queries/s")
		if !ok {
			continue
		}
		s, okS := r.res.median(churnName(c), "sessions/s")
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", modeName(c), withInterval(rate(q.Center), q),
			ifOK(okS, sessions(s)), r.vs(churnName(c), churnName(single), "queries/s"))
	}
	b.WriteString("\n")
	if !okBase {
		return
	}
	var parts []string
	for _, c := range []string{bench.JsonstreamCursorAuto, bench.JsonstreamCursorFixed} {
		q, ok := r.res.median(churnName(c), "queries/s")
		s, okS := r.res.median(churnName(c), "sessions/s")
		if ok && okS {
			parts = append(parts, fmt.Sprintf("%s %s (%s, %s new sessions/s)", display(c),
				verdict(q >= goalChurnFactor*base && s == 0), r.vs(churnName(c), churnName(single), "queries/s"), sessions(s)))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "Goal, cursor modes: at least %d× the single statement's queries/s with no new session: %s.\n\n",
			goalChurnFactor, strings.Join(parts, "; "))
	}
}

func fetchName(rows int, client string) string {
	return fmt.Sprintf("Fetch/rows=%d/client=%s", rows, client)
}

// drainTable writes rows/s and CPU per row for clients at sizes, as
// ratios to base.
func (r *report) drainTable(b *strings.Builder, sizes []int, clients []string, name func(int, string) string, base string) {
	b.WriteString("| rows |")
	for _, c := range clients {
		fmt.Fprintf(b, " %s rows/s |", shortName(c))
	}
	for _, c := range clients {
		if c != base {
			fmt.Fprintf(b, " %s ÷ %s: rows/s; CPU/row |", shortName(c), shortName(base))
		}
	}
	b.WriteString("\n|---:|" + strings.Repeat("---:|", 2*len(clients)-1) + "\n")
	for _, n := range sizes {
		if !r.measured(name(n, base)) {
			continue
		}
		fmt.Fprintf(b, "| %s |", count(n))
		for _, c := range clients {
			if s, ok := r.res.summary(name(n, c), "rows/s"); ok {
				fmt.Fprintf(b, " %s |", withInterval(rate(s.Center), s))
			} else {
				b.WriteString(" – |")
			}
		}
		for _, c := range clients {
			if c == base {
				continue
			}
			fmt.Fprintf(b, " %s; %s |", r.vs(name(n, c), name(n, base), "rows/s"), r.vs(name(n, c), name(n, base), "cpu-ns/row"))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// serverCPUTable writes the server backend's CPU per row for clients at
// sizes, each with its ratio to lib/pq's; nothing when the backends could
// not be read.
func (r *report) serverCPUTable(b *strings.Builder, sizes []int, clients []string) {
	const unit = "server-cpu-ns/row"
	found := false
	for _, n := range sizes {
		for _, c := range clients {
			if _, ok := r.res.median(fetchName(n, c), unit); ok {
				found = true
			}
		}
	}
	if !found {
		return
	}
	b.WriteString("Server CPU per row, and its ratio to lib/pq's:\n\n| rows |")
	for _, c := range clients {
		fmt.Fprintf(b, " %s |", shortName(c))
	}
	b.WriteString("\n|---:|" + strings.Repeat("---:|", len(clients)) + "\n")
	for _, n := range sizes {
		fmt.Fprintf(b, "| %s |", count(n))
		for _, c := range clients {
			s, ok := r.res.summary(fetchName(n, c), unit)
			if !ok {
				b.WriteString(" – |")
				continue
			}
			cell := withInterval(duration(s.Center), s)
			if c != bench.LibPQ {
				cell += "; " + r.vs(fetchName(n, c), fetchName(n, bench.LibPQ), unit)
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func (r *report) cursorDrain(b *strings.Builder) {
	if !r.has("Fetch/") {
		return
	}
	b.WriteString("### Complete results\n\n")
	b.WriteString("`BenchmarkFetch`: `SELECT data FROM v_entity ORDER BY id LIMIT n`, every row read, as in " +
		"[Streaming](#streaming), in each of jsonstream's modes and through lib/pq. Where the server runs on " +
		"this machine, each database/sql client asks for `pg_backend_pid()` on the connection it then streams " +
		"on, and the backend's CPU time is read from `/proc/<pid>/schedstat` before and after: *server CPU/row* " +
		"is what the client's protocol asks of the server.\n\n")
	single := bench.JsonstreamSingle
	clients := []string{single, bench.Jsonstream, bench.JsonstreamCursorAuto, bench.JsonstreamCursorFixed, bench.LibPQ}
	sizes := bench.SizesUpTo(bench.FetchSizes, r.cfg.rows)
	r.drainTable(b, sizes, clients, fetchName, single)
	r.serverCPUTable(b, sizes, clients)
	var parts []string
	for _, n := range sizes {
		if n < 100_000 {
			continue
		}
		s, ok1 := r.res.median(fetchName(n, single), "rows/s")
		auto, ok2 := r.res.median(fetchName(n, bench.JsonstreamCursorAuto), "rows/s")
		if ok1 && ok2 {
			parts = append(parts, fmt.Sprintf("%s rows %s (%s)", count(n), verdict(auto >= (1-goalDrainLoss)*s),
				r.vs(fetchName(n, bench.JsonstreamCursorAuto), fetchName(n, single), "rows/s")))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "Goal, FetchAuto: rows/s within %.0f%% of the single statement's from 100,000 rows: %s.\n\n",
			100*goalDrainLoss, strings.Join(parts, "; "))
	}
	for _, n := range sizes {
		for _, c := range []string{bench.JsonstreamCursorAuto, bench.JsonstreamCursorFixed} {
			what := fmt.Sprintf("%s, streaming %s rows", display(c), count(n))
			r.compare("the single-statement mode", what, fetchName(n, c), fetchName(n, single), "rows/s", higherIsBetter, rate)
			r.compare("the single-statement mode", what, fetchName(n, c), fetchName(n, single), "cpu-ns/row", lowerIsBetter, duration)
		}
	}
}

func queryRowName(client string) string { return "QueryRow/client=" + client }

func (r *report) cursorQueryRow(b *strings.Builder) {
	if !r.has("QueryRow/") {
		return
	}
	b.WriteString("### A one-row query\n\n")
	b.WriteString("`BenchmarkQueryRow`: `QueryRow(\"SELECT data FROM v_entity WHERE id = $1\")`. The cursor " +
		"modes send BEGIN, DECLARE, FETCH, CLOSE and COMMIT where the single statement sends one query " +
		"(which lib/pq, for a query with arguments, prepares and then executes): what that costs a query " +
		"too small to need a cursor. The portal mode sends Parse, Bind, Describe, Execute and Flush, then " +
		"Sync.\n\n")
	b.WriteString("| client | ns/op | CPU ns/op | allocs/op | time ÷ single statement | time ÷ lib/pq |\n|---|---:|---:|---:|---:|---:|\n")
	for _, c := range bench.FetchClients {
		op, ok := r.res.summary(queryRowName(c), "ns/op")
		if !ok {
			continue
		}
		cpu, _ := r.res.summary(queryRowName(c), "cpu-ns/op")
		allocs, _ := r.res.median(queryRowName(c), "allocs/op")
		fmt.Fprintf(b, "| %s | %s | %s | %.0f | %s | %s |\n", modeName(c), withInterval(duration(op.Center), op),
			withInterval(duration(cpu.Center), cpu), allocs,
			r.vs(queryRowName(c), queryRowName(bench.JsonstreamSingle), "ns/op"), r.vs(queryRowName(c), queryRowName(bench.LibPQ), "ns/op"))
	}
	b.WriteString("\n")
}

func selectOneName(ctx, client string) string {
	return fmt.Sprintf("SelectOne/ctx=%s/client=%s", ctx, client)
}

func (r *report) selectOne(b *strings.Builder) {
	if !r.has("SelectOne/") {
		return
	}
	b.WriteString("### QueryRow(\"SELECT 1\") in the default mode\n\n")
	b.WriteString("`BenchmarkSelectOne`: the most common query shape, whose rows database/sql closes before " +
		"reading to their end, so that it goes through the early-close path on every call. jsonstream in " +
		"its default (portal) mode and in the single-statement mode against lib/pq, with " +
		"`context.Background()` and with a cancellable context (for which lib/pq starts a goroutine per " +
		"query), each client in a process of its own. Wall time and the client's CPU time per query. The " +
		"default mode's goal is judged on paired ratios in [Portal mode](#portal-mode-the-default).\n\n")
	b.WriteString("| context | client | ns/op | CPU ns/op | allocs/op | time ÷ lib/pq | CPU ÷ lib/pq |\n|---|---|---:|---:|---:|---:|---:|\n")
	var parts []string
	for _, kind := range []string{"background", "cancel"} {
		base, okB := r.res.median(selectOneName(kind, bench.LibPQ), "ns/op")
		baseCPU, okC := r.res.median(selectOneName(kind, bench.LibPQ), "cpu-ns/op")
		for _, c := range bench.SelectOneClients {
			name := selectOneName(kind, c)
			op, ok := r.res.summary(name, "ns/op")
			if !ok {
				continue
			}
			cpu, _ := r.res.summary(name, "cpu-ns/op")
			allocs, _ := r.res.median(name, "allocs/op")
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f | %s | %s |\n", kind, modeName(c), withInterval(duration(op.Center), op),
				withInterval(duration(cpu.Center), cpu), allocs,
				r.vs(name, selectOneName(kind, bench.LibPQ), "ns/op"), r.vs(name, selectOneName(kind, bench.LibPQ), "cpu-ns/op"))
		}
		single := selectOneName(kind, bench.JsonstreamSingle)
		js, ok1 := r.res.median(single, "ns/op")
		jsCPU, ok2 := r.res.median(single, "cpu-ns/op")
		if ok1 && ok2 && okB && okC {
			parts = append(parts, fmt.Sprintf("%s context %s (time %s, CPU %s)", kind,
				verdict(js <= (1+goalSelectOne)*base && jsCPU <= (1+goalSelectOne)*baseCPU),
				r.vs(single, selectOneName(kind, bench.LibPQ), "ns/op"), r.vs(single, selectOneName(kind, bench.LibPQ), "cpu-ns/op")))
		}
		for _, c := range []string{bench.Jsonstream, bench.JsonstreamSingle} {
			what := fmt.Sprintf("QueryRow(\"SELECT 1\"), %s context, %s", kind, modeName(c))
			r.compare("vs lib/pq", what, selectOneName(kind, c), selectOneName(kind, bench.LibPQ), "ns/op", lowerIsBetter, duration)
			r.compare("vs lib/pq", what, selectOneName(kind, c), selectOneName(kind, bench.LibPQ), "cpu-ns/op", lowerIsBetter, duration)
		}
	}
	b.WriteString("\n")
	if len(parts) > 0 {
		fmt.Fprintf(b, "Goal, single statement (the protocol of every query the portal mode does not take): within %.0f%% "+
			"of lib/pq in both time and CPU: %s.\n\n", 100*goalSelectOne, strings.Join(parts, "; "))
	}
}

func proxyName(rows int, client string) string {
	return fmt.Sprintf("Proxy/rows=%d/client=%s", rows, client)
}

func proxyEarlyName(client string) string { return "Proxy/early-close/client=" + client }

func (r *report) cursorProxy(b *strings.Builder) {
	if !r.has("Proxy/") {
		return
	}
	b.WriteString("### Through a network with a 2 ms round trip\n\n")
	fmt.Fprintf(b, "`BenchmarkProxy`: the drains of [Complete results](#complete-results) and the early "+
		"close of [Early close, then the next query](#early-close-then-the-next-query), through a proxy "+
		"in the benchmark process (`bench.DelayProxy`) that holds each direction for %v: every round trip "+
		"costs 2 ms more, a stream pays %v once. The proxy's own CPU is counted in the client's.\n\n",
		bench.ProxyDelay, bench.ProxyDelay)
	r.drainTable(b, bench.SizesUpTo(bench.FetchSizes, r.cfg.rows), bench.ProxyClients, proxyName, bench.JsonstreamSingle)
	r.earlyCloseTable(b, bench.ProxyClients, proxyEarlyName, bench.JsonstreamSingle)
}

// cursorSummary writes the cursor modes' headline numbers for the summary
// at the top of the report.
func (r *report) cursorSummary(b *strings.Builder) {
	auto, fixed, single := bench.JsonstreamCursorAuto, bench.JsonstreamCursorFixed, bench.JsonstreamSingle
	op := func(name, unit string) (float64, bool) { return r.res.median(name, unit) }
	if a, ok := op(earlyNextName(auto), "ns/op"); ok {
		as, _ := op(earlyNextName(auto), "sessions/op")
		line := fmt.Sprintf("- **Closing after 1 row of %s and running the next query**: cursor FetchAuto %s with %s new sessions per query",
			count(r.cfg.rows), duration(a), sessions(as))
		if s, ok := op(earlyNextName(single), "ns/op"); ok {
			ss, _ := op(earlyNextName(single), "sessions/op")
			line += fmt.Sprintf(", single statement %s with %s", duration(s), sessions(ss))
		}
		if l, ok := op(earlyNextName(bench.LibPQ), "ns/op"); ok {
			line += ", lib/pq " + duration(l)
		}
		b.WriteString(line + ".\n")
	}
	if a, ok := op(earlyTxName(auto), "ns/op"); ok {
		line := fmt.Sprintf("- **The same inside BeginTx**: cursor FetchAuto %s", duration(a))
		if s, ok := op(earlyTxName(single), "ns/op"); ok {
			line += ", single statement (which drains) " + duration(s)
		}
		b.WriteString(line + ".\n")
	}
	if a, ok := op(churnName(auto), "queries/s"); ok {
		as, _ := op(churnName(auto), "sessions/s")
		line := fmt.Sprintf("- **Churn** (%d workers, read %d rows and Close): cursor FetchAuto %s queries/s and %s new sessions/s",
			bench.ChurnWorkers, bench.ChurnRows, rate(a), sessions(as))
		if s, ok := op(churnName(single), "queries/s"); ok && s > 0 {
			ss, _ := op(churnName(single), "sessions/s")
			line += fmt.Sprintf(", %s the single statement's %s queries/s with %s new sessions/s",
				r.vs(churnName(auto), churnName(single), "queries/s"), rate(s), sessions(ss))
		}
		b.WriteString(line + ".\n")
	}
	n := bench.SizesUpTo(bench.FetchSizes, r.cfg.rows)
	largest := n[len(n)-1]
	if r.measured(fetchName(largest, auto)) {
		if r.measured(fetchName(largest, single)) {
			line := fmt.Sprintf("- **Streaming %s rows from a cursor**: FetchAuto %s of the single statement's rows/s",
				count(largest), r.vs(fetchName(largest, auto), fetchName(largest, single), "rows/s"))
			if r.measured(fetchName(largest, fixed)) {
				line += fmt.Sprintf(", fetch %d %s", bench.FixedFetchSize, r.vs(fetchName(largest, fixed), fetchName(largest, single), "rows/s"))
			}
			if r.measured(proxyName(largest, auto)) && r.measured(proxyName(largest, single)) {
				line += fmt.Sprintf("; with a 2 ms round trip FetchAuto %s", r.vs(proxyName(largest, auto), proxyName(largest, single), "rows/s"))
				if r.measured(proxyName(largest, fixed)) {
					line += fmt.Sprintf(", fetch %d %s", bench.FixedFetchSize, r.vs(proxyName(largest, fixed), proxyName(largest, single), "rows/s"))
				}
			}
			b.WriteString(line + ".\n")
		}
	}
	if a, ok := op(queryRowName(auto), "ns/op"); ok {
		if s, ok := op(queryRowName(single), "ns/op"); ok {
			fmt.Fprintf(b, "- **A one-row query in cursor mode**: FetchAuto %s against the single statement's %s (%s).\n",
				duration(a), duration(s), r.vs(queryRowName(auto), queryRowName(single), "ns/op"))
		}
	}
	var parts []string
	for _, kind := range []string{"background", "cancel"} {
		js, l := selectOneName(kind, bench.Jsonstream), selectOneName(kind, bench.LibPQ)
		if r.measured(js) && r.measured(l) {
			parts = append(parts, fmt.Sprintf("%s context: time %s, CPU %s", kind, r.vs(js, l, "ns/op"), r.vs(js, l, "cpu-ns/op")))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "- **QueryRow(\"SELECT 1\")**, jsonstream's default (portal) mode ÷ lib/pq, each in a process of its own: %s.\n", strings.Join(parts, "; "))
	}
}
