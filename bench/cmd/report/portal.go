package main

import (
	"fmt"
	"strings"

	"github.com/jsonstream/jsonstream/bench"
)

// The portal mode's section: jsonstream's default mode for reads, held to
// its goals against lib/pq and the cursor mode. Each goal is one row with
// the figures it is judged on, their ratio and the verdict; the figures
// come from the benchmarks the other sections show in full.

// Goals the portal mode is held to; the report says whether this run met
// each.
const (
	// goalPortalDrain is the least rows/s over lib/pq's, on loopback.
	goalPortalDrain = 0.98
	// goalPortalCPU is the most client CPU, and server CPU, per row over
	// lib/pq's.
	goalPortalCPU = 1.02
	// goalPortalProxyDrain is the least rows/s over lib/pq's through the
	// DelayProxy.
	goalPortalProxyDrain = 0.95
	// goalPortalServerWait is the most time, in percent of samples, the
	// server may wait for the client (ClientRead) while it streams a
	// drain through the DelayProxy: what the window is for.
	goalPortalServerWait = 2.0
	// goalPortalEarlyClose is the most an early close and the next query
	// (or the transaction around the close) may take on loopback, in ns.
	goalPortalEarlyClose = 0.3e6
	// goalPortalProxyRoundTrips is the most round trips an early close
	// and the next query may take through the DelayProxy;
	// goalPortalProxyEarlyClose is the time that allows, in ns, with half
	// a millisecond for everything that is not waiting for the proxy.
	goalPortalProxyRoundTrips = 4
	goalPortalProxyEarlyClose = 8.5e6
	// goalPortalQueryRow is the most time, and client CPU, a QueryRow may
	// take over lib/pq's, as the median of paired ratios.
	goalPortalQueryRow = 1.03
)

// portalOutcome is one goal's verdict, kept for the summary.
type portalOutcome struct {
	// short names the goal in the summary's list of those not met.
	short string
	met   bool
}

// goalRow is one row of the portal section's table.
type goalRow struct {
	figure, goal, measured, ratio string
	// judged is false when a figure of the goal was not measured, so that
	// no verdict can be given.
	judged, met bool
	// note follows the verdict, to say what it rests on.
	note string
	// short names the goal in the summary.
	short string
}

func pairedName(query string) string { return "QueryRowPaired/query=" + query }

// nullName names BenchmarkQueryRowNull's figures: lib/pq beside lib/pq.
var nullName = "QueryRowNull/query=" + bench.PairedSelectOne

// windowName names a client's BenchmarkProxyWindow.
func windowName(client string) string { return "ProxyWindow/client=" + client }

// pairedQueryText is the query of a paired sub-benchmark, as the table
// shows it.
func pairedQueryText(query string) string {
	switch query {
	case bench.PairedSelectOne:
		return "`QueryRow(\"SELECT 1\")`, autocommit"
	case bench.PairedArg:
		return "`QueryRow(\"SELECT $1::int\", n)`, autocommit"
	case bench.PairedSelectOneTx:
		return "`QueryRow(\"SELECT 1\")` inside `BeginTx`"
	case bench.PairedArgCtx:
		return "`QueryRow(\"SELECT $1::int\", n)`, autocommit, a context that can end"
	case bench.PairedLookup:
		return "`QueryRow(\"SELECT id FROM entity WHERE id = $1\", n)`, autocommit"
	case bench.PairedLookupLiteral:
		return "`QueryRow(\"SELECT id FROM entity WHERE id = 1\")`, autocommit"
	}
	return query
}

// pairedShort names a paired query in the summary.
func pairedShort(query string) string {
	switch query {
	case bench.PairedSelectOne:
		return "QueryRow(\"SELECT 1\") in autocommit"
	case bench.PairedArg:
		return "QueryRow with an argument"
	case bench.PairedSelectOneTx:
		return "QueryRow(\"SELECT 1\") in a transaction"
	case bench.PairedArgCtx:
		return "QueryRow with an argument and a request's context"
	case bench.PairedLookup:
		return "QueryRow of a lookup by an argument"
	case bench.PairedLookupLiteral:
		return "QueryRow of a lookup without arguments"
	}
	return query
}

// portalMeasured reports whether any figure of the portal section was
// measured.
func (r *report) portalMeasured() bool {
	n := r.largestFetch()
	for _, name := range []string{
		fetchName(n, bench.Jsonstream), proxyName(r.largestProxy(), bench.Jsonstream), earlyNextName(bench.Jsonstream),
		earlyTxName(bench.Jsonstream), earlyBeginName(bench.Jsonstream), proxyEarlyName(bench.Jsonstream), churnName(bench.Jsonstream),
		windowName(bench.Jsonstream),
	} {
		if r.measured(name) {
			return true
		}
	}
	return r.has("QueryRowPaired/")
}

// largestFetch is the largest result BenchmarkFetch streamed: 1,000,000
// rows unless the dataset is smaller.
func (r *report) largestFetch() int {
	sizes := bench.SizesUpTo(bench.FetchSizes, r.cfg.rows)
	return sizes[len(sizes)-1]
}

// largestProxy is the largest result BenchmarkProxy streamed.
func (r *report) largestProxy() int {
	sizes := bench.SizesUpTo(bench.FetchSizes, r.cfg.rows)
	return sizes[len(sizes)-1]
}

func (r *report) portal(b *strings.Builder) {
	if !r.portalMeasured() {
		return
	}
	b.WriteString("## Portal mode (the default)\n\n")
	b.WriteString("A read on a connection opened with `sql.Open(\"jsonstream\", dsn)` or `NewConnectorConfig` runs, " +
		"unless `WithStreamMode` says otherwise, in a portal of the extended protocol that jsonstream drives " +
		"itself on lib/pq's socket: Parse, Bind, Describe, then an Execute of a batch of rows and a Flush, with " +
		"two Executes outstanding so that the server never waits. An early Close reads off what is in flight, " +
		"closes the portal (or leaves the caller's transaction as it was) and sends Sync: the connection stays. " +
		"*jsonstream* in every table of this report is this mode; *single statement* pins " +
		"`WithStreamMode(ModeSingle)`, lib/pq's protocol with an early Close that cuts the connection. " +
		"Each goal below is judged on the medians of the figures it names; the ratios carry the U test's " +
		"p-value, or, for the paired QueryRow figures, the 95% interval of the median of their per-round ratios.\n\n")
	rows := r.portalRows()
	b.WriteString("| figure | goal | measured | ratio | verdict |\n|---|---|---|---|---|\n")
	for _, row := range rows {
		v := "–"
		if row.judged {
			v = verdict(row.met)
		}
		if row.note != "" {
			v += " " + row.note
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", row.figure, row.goal, row.measured, row.ratio, v)
		if row.judged {
			r.portalGoals = append(r.portalGoals, portalOutcome{short: row.short, met: row.met})
		}
	}
	b.WriteString("\n")
	if r.has(pairedName(bench.PairedSelectOne)) {
		b.WriteString("`QueryRow(\"SELECT 1\")` in autocommit is one round trip for lib/pq, whose simple Query " +
			"protocol carries the statement and its end in one message. Outside a transaction a portal stream's " +
			"first batch goes without Sync, which would end the implicit transaction, and the portal with it, while " +
			"rows may be left. A read whose text bounds its result to the first batch (a SELECT without FROM, " +
			"parenthesis or operator, such as `SELECT 1` and `SELECT $1::int`; a LIMIT of at most 16 rows; SHOW of " +
			"one setting) has none left: it asks for the whole result with its Sync, as the simple Query lib/pq " +
			"sends when it has no arguments, as Parse, Describe, Bind, Execute and Sync when it has: one round trip. " +
			"With an argument lib/pq takes two (Parse, Describe and Sync, then Bind, Execute and Sync). A lookup " +
			"whose text does not bound its result takes the portal two round trips in autocommit: the `lookup` rows " +
			"measure that, not judged by the goal; without arguments it is where the portal costs most against " +
			"lib/pq's simple Query.\n\n")
	}
	if r.has("QueryRowPaired/") {
		fmt.Fprintf(b, "`BenchmarkQueryRowPaired` runs lib/pq and jsonstream in one process and one run of the "+
			"benchmark, in turns of %d queries, the side that goes first alternating, each through new pools "+
			"(new server sessions) that the run opens; each run gives one ratio of "+
			"jsonstream's wall time to lib/pq's, and one of their client CPU times. In each of the report's rounds "+
			"one process makes %d such runs (`-benchtime %s` each); the ratio shown is the median of the ratios "+
			"of all runs, with its 95%% interval.\n\n",
			bench.PairedBlock, bench.PairedRounds, bench.PairedBenchtime)
		if t, ok := r.res.summary(nullName, "time-ratio"); ok {
			fmt.Fprintf(b, "The method itself, measured the same way with lib/pq on both sides "+
				"(`BenchmarkQueryRowNull`, `QueryRow(\"SELECT 1\")`, %d runs): time %s", t.n, pairedRatio(t))
			if c, ok := r.res.summary(nullName, "cpu-ratio"); ok {
				fmt.Fprintf(b, ", client CPU %s", pairedRatio(c))
			}
			b.WriteString(". Two identical clients differ by that much here: it is the bias and the noise of " +
				"the method and the machine, not of a driver.\n\n")
		}
	}
	met := 0
	for _, g := range r.portalGoals {
		if g.met {
			met++
		}
	}
	if len(r.portalGoals) > 0 {
		fmt.Fprintf(b, "%d of the %d goals judged were met on this run.\n\n", met, len(r.portalGoals))
	}
}

// portalRows returns the rows of the goals table whose figures were
// measured, and records findings for the comparisons jsonstream lost.
func (r *report) portalRows() []goalRow {
	var rows []goalRow
	js, lib := bench.Jsonstream, bench.LibPQ
	// both formats the medians of ours and theirs in unit, with their
	// intervals unless the unit counts allocations, which barely vary.
	both := func(ours, theirs, theirsName, unit string, format func(float64) string) string {
		o, _ := r.res.summary(ours, unit)
		t, _ := r.res.summary(theirs, unit)
		if strings.HasPrefix(unit, "allocs/") {
			return fmt.Sprintf("jsonstream %s, %s %s", format(o.Center), theirsName, format(t.Center))
		}
		return fmt.Sprintf("jsonstream %s, %s %s", withInterval(format(o.Center), o), theirsName, withInterval(format(t.Center), t))
	}
	// against is a row judging ours over theirs in unit by its ratio.
	against := func(figure, goal, short, ours, theirs, theirsName, unit string, format func(float64) string, ok func(ratio float64) bool) {
		o, ok1 := r.res.median(ours, unit)
		t, ok2 := r.res.median(theirs, unit)
		if !ok1 || !ok2 || t == 0 {
			return
		}
		rows = append(rows, goalRow{figure: figure, goal: goal, short: short,
			measured: both(ours, theirs, theirsName, unit, format), ratio: r.vs(ours, theirs, unit),
			judged: true, met: ok(o / t)})
	}

	n := r.largestFetch()
	what := fmt.Sprintf("draining %s rows (BenchmarkFetch)", count(n))
	drain := fmt.Sprintf("Draining %s rows, loopback (`BenchmarkFetch`)", count(n))
	fjs, flib := fetchName(n, js), fetchName(n, lib)
	against(drain+": rows/s", fmt.Sprintf("≥ %.2f× lib/pq", goalPortalDrain), "drain rows/s",
		fjs, flib, "lib/pq", "rows/s", rate, func(v float64) bool { return v >= goalPortalDrain })
	against("… client CPU per row", fmt.Sprintf("≤ %.2f× lib/pq", goalPortalCPU), "drain client CPU",
		fjs, flib, "lib/pq", "cpu-ns/row", duration, func(v float64) bool { return v <= goalPortalCPU })
	if r.measured(fjs) && r.measured(flib) {
		if _, ok := r.res.median(fjs, "server-cpu-ns/row"); ok {
			against("… server CPU per row (the backend's, from /proc)", fmt.Sprintf("≤ %.2f× lib/pq", goalPortalCPU), "drain server CPU",
				fjs, flib, "lib/pq", "server-cpu-ns/row", duration, func(v float64) bool { return v <= goalPortalCPU })
		} else {
			rows = append(rows, goalRow{figure: "… server CPU per row", goal: fmt.Sprintf("≤ %.2f× lib/pq", goalPortalCPU),
				measured: "not measured: the server's backends are not readable in this machine's /proc", ratio: "–"})
		}
	}
	against("… allocations per row", "≤ lib/pq's", "drain allocations",
		fjs, flib, "lib/pq", "allocs/row", func(v float64) string { return fmt.Sprintf("%.3f", v) },
		func(v float64) bool { return v <= 1 })
	for _, unit := range []string{"rows/s", "cpu-ns/row", "server-cpu-ns/row", "allocs/row"} {
		dir, format := lowerIsBetter, duration
		switch unit {
		case "rows/s":
			dir, format = higherIsBetter, rate
		case "allocs/row":
			format = allocCount
		}
		r.compare("vs lib/pq", what, fjs, flib, unit, dir, format)
	}

	pn := r.largestProxy()
	pjs, plib := proxyName(pn, js), proxyName(pn, lib)
	against(fmt.Sprintf("Draining %s rows through the proxy (%s each way; `BenchmarkProxy`): rows/s", count(pn), duration(float64(bench.ProxyDelay))),
		fmt.Sprintf("≥ %.2f× lib/pq", goalPortalProxyDrain), "proxy drain rows/s",
		pjs, plib, "lib/pq", "rows/s", rate, func(v float64) bool { return v >= goalPortalProxyDrain })
	r.compare("vs lib/pq", fmt.Sprintf("draining %s rows through the proxy", count(pn)), pjs, plib, "rows/s", higherIsBetter, rate)
	if w, ok := r.res.summary(windowName(js), "server-wait-%"); ok {
		measured := fmt.Sprintf("%.1f%% of samples", w.Center)
		for _, c := range []string{lib, bench.JsonstreamCursorAuto} {
			if v, ok := r.res.median(windowName(c), "server-wait-%"); ok {
				measured += fmt.Sprintf("; %s %.1f%%", display(c), v)
			}
		}
		rows = append(rows, goalRow{figure: "… the server waiting for the next Execute (ClientRead) during that drain (`BenchmarkProxyWindow`)",
			goal: fmt.Sprintf("≤ %.0f%% of samples", goalPortalServerWait), measured: measured, ratio: "–",
			judged: true, met: w.Center <= goalPortalServerWait, short: "server waiting through the proxy"})
	}

	// closeRow is a row for an early close whose whole cost, ns/op, is
	// held to limit with no new session.
	closeRow := func(figure, short, name, base string) {
		op, ok := r.res.summary(name, "ns/op")
		if !ok {
			return
		}
		s, okS := r.res.median(name, "sessions/op")
		measured := withInterval(duration(op.Center), op)
		if cl, ok := r.res.summary(name, "ns/close"); ok {
			measured += fmt.Sprintf(" (Close %s)", duration(cl.Center))
		}
		row := goalRow{figure: figure, goal: fmt.Sprintf("≤ %s, 0 new sessions", duration(goalPortalEarlyClose)), short: short,
			ratio: ifOK(r.measured(base), "lib/pq's: "+r.vs(name, base, "ns/op")), judged: true, met: op.Center <= goalPortalEarlyClose}
		if okS {
			measured += fmt.Sprintf(", %s new sessions", sessions(s))
			row.met = row.met && s == 0
		} else {
			measured += ", new sessions not counted (the server has no pg_stat_database.sessions)"
			row.note = "(time only)"
		}
		row.measured = measured
		rows = append(rows, row)
	}
	closeRow(fmt.Sprintf("Closing after 1 row of %s, then `SELECT 1`, loopback (`BenchmarkEarlyCloseNext`)", count(r.cfg.rows)),
		"early close", earlyNextName(js), earlyNextName(lib))
	closeRow("… inside `BeginTx`: begin, query, 1 row, Close, Commit (`BenchmarkEarlyCloseTx`)",
		"early close in BeginTx", earlyTxName(js), earlyTxName(lib))
	closeRow("… after `Exec(\"BEGIN\")` on a `sql.Conn`: query, 1 row, Close, `Exec(\"COMMIT\")` (`BenchmarkEarlyCloseBegin`)",
		"early close after Exec(BEGIN)", earlyBeginName(js), earlyBeginName(lib))

	if op, ok := r.res.summary(proxyEarlyName(js), "ns/op"); ok {
		rtt := float64(2 * bench.ProxyDelay.Nanoseconds())
		measured := fmt.Sprintf("%s, %.1f round trips of %s", withInterval(duration(op.Center), op), op.Center/rtt, duration(rtt))
		if s, ok := r.res.median(proxyEarlyName(js), "sessions/op"); ok {
			measured += fmt.Sprintf(", %s new sessions", sessions(s))
		}
		rows = append(rows, goalRow{figure: "… the same through the proxy (`BenchmarkProxy`)",
			goal:     fmt.Sprintf("≤ %d round trips (≤ %s)", goalPortalProxyRoundTrips, duration(goalPortalProxyEarlyClose)),
			measured: measured, ratio: ifOK(r.measured(proxyEarlyName(lib)), "lib/pq's: "+r.vs(proxyEarlyName(js), proxyEarlyName(lib), "ns/op")),
			judged: true, met: op.Center <= goalPortalProxyEarlyClose, short: "early close through the proxy"})
	}

	auto := bench.JsonstreamCursorAuto
	if q, ok := r.res.median(churnName(js), "queries/s"); ok {
		if c, ok := r.res.median(churnName(auto), "queries/s"); ok {
			s, okS := r.res.median(churnName(js), "sessions/s")
			row := goalRow{figure: fmt.Sprintf("%d workers: query, read %d, Close (`BenchmarkChurn`): queries/s", bench.ChurnWorkers, bench.ChurnRows),
				goal:     "≥ the cursor mode's (FetchAuto), 0 new sessions",
				measured: both(churnName(js), churnName(auto), "cursor FetchAuto", "queries/s", rate),
				ratio:    "FetchAuto's: " + r.vs(churnName(js), churnName(auto), "queries/s"),
				judged:   true, met: q >= c, short: "churn"}
			if okS {
				row.measured += fmt.Sprintf("; %s new sessions/s", sessions(s))
				row.met = row.met && s == 0
			} else {
				row.note = "(queries/s only)"
			}
			rows = append(rows, row)
			r.compare("the cursor mode", "churn, queries/s", churnName(js), churnName(auto), "queries/s", higherIsBetter, rate)
		}
	}

	for _, q := range bench.PairedQueries {
		name := pairedName(q)
		t, ok1 := r.res.summary(name, "time-ratio")
		c, ok2 := r.res.summary(name, "cpu-ratio")
		if !ok1 {
			continue
		}
		perQuery := func(client string) string {
			ns, ok := r.res.median(name, client+"-ns/query")
			if !ok {
				return display(client) + " –"
			}
			s := display(client) + " " + duration(ns)
			if cpu, ok := r.res.median(name, client+"-cpu-ns/query"); ok {
				s += fmt.Sprintf(" (CPU %s)", duration(cpu))
			}
			return s
		}
		row := goalRow{figure: pairedQueryText(q) + " (`BenchmarkQueryRowPaired`)",
			goal:     fmt.Sprintf("≤ %.2f× lib/pq in time and in client CPU, paired", goalPortalQueryRow),
			measured: fmt.Sprintf("%s, %s per query, medians of %d rounds", perQuery(bench.PairedClients[0]), perQuery(bench.PairedClients[1]), t.n),
			ratio:    "time " + pairedRatio(t),
			judged:   true, met: t.Center <= goalPortalQueryRow, short: pairedShort(q)}
		if !bench.PairedGoal(q) {
			row.goal, row.judged = "– (a result its text does not bound: measured, not a goal)", false
		}
		r.pairedFinding(pairedQueryText(q)+", time", t)
		if ok2 {
			row.ratio += "; CPU " + pairedRatio(c)
			row.met = row.met && c.Center <= goalPortalQueryRow
			r.pairedFinding(pairedQueryText(q)+", client CPU", c)
		} else {
			row.note = "(time only: no CPU time on this system)"
		}
		rows = append(rows, row)
	}
	return rows
}

// pairedRatio formats the median of paired ratios with its 95% interval.
func pairedRatio(s summary) string {
	if s.n < roundsForInterval {
		return ratio(s.Center)
	}
	return fmt.Sprintf("%s (95%%: %s–%s)", ratio(s.Center), ratio(s.Lo), ratio(s.Hi))
}

// pairedFinding records a paired ratio above 1 among the comparisons
// jsonstream lost: significant when its interval lies above 1.
func (r *report) pairedFinding(what string, s summary) {
	if s.Center <= 1 {
		return
	}
	noisy := s.n < roundsForInterval || s.Lo <= 1
	text := fmt.Sprintf("%s, median of %d paired ratios: %s", what, s.n, pairedRatio(s))
	if noisy {
		text += ", an interval that holds 1"
	}
	r.slower = append(r.slower, finding{against: "vs lib/pq", text: text, noisy: noisy})
}

// portalSummary writes the portal mode's line of the summary at the top
// of the report.
func (r *report) portalSummary(b *strings.Builder) {
	if len(r.portalGoals) == 0 {
		return
	}
	met := 0
	var missed []string
	for _, g := range r.portalGoals {
		if g.met {
			met++
		} else {
			missed = append(missed, g.short)
		}
	}
	line := fmt.Sprintf("- **Portal mode, the default for reads**: %d of %d goals met", met, len(r.portalGoals))
	if len(missed) > 0 {
		line += "; not met: " + strings.Join(missed, ", ")
	}
	b.WriteString(line + " ([Portal mode](#portal-mode-the-default)).\n")
}
