package bench

import (
	"context"
	"database/sql"
	"flag"
	"runtime"
	"testing"
	"time"
)

// pairedSide is the client BenchmarkQueryRowPaired sets beside lib/pq.
var pairedSide = flag.String("paired-side", PairedClients[1], "the client BenchmarkQueryRowPaired runs beside lib/pq")

// rowQueryer is where a side of BenchmarkQueryRowPaired runs its
// QueryRows: a pool, or a transaction of it.
type rowQueryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// BenchmarkQueryRowPaired protects what jsonstream's default mode costs
// the smallest queries against lib/pq, measured so that the machine's
// drift cannot decide it: both clients run in one process and in one run
// of the benchmark, taking turns of PairedBlock queries (the side that
// goes first alternating from turn to turn), b.N queries each, each
// through pools of its own that the run opens (new server sessions). A
// run is one round; it reports jsonstream's wall time over lib/pq's
// (time-ratio) and its client CPU time over lib/pq's (cpu-ratio), with
// each side's ns/query and cpu-ns/query. cmd/report runs PairedRounds
// rounds per process and takes the median of the ratios; the goal is
// 1.03 or less for both.
//
// query=select1 is QueryRow("SELECT 1") in autocommit, query=arg
// QueryRow("SELECT $1::int", n), query=select1-tx QueryRow("SELECT 1")
// inside a BeginTx transaction that lasts the round, query=arg-ctx the
// query of arg with a context that can end (context.WithCancel, as
// net/http gives a handler), the context of most services' queries.
// query=lookup and query=lookup-literal look a document up by its id,
// given as an argument and written in the text: queries whose result
// the text does not bound (PairedGoal).
//
// -paired-side sets another client beside lib/pq, such as
// jsonstream-single: what the wrapping costs without the portal.
func BenchmarkQueryRowPaired(b *testing.B) {
	clients := PairedClients
	if _, ok := ClientNamed(*pairedSide); !ok {
		b.Fatalf("-paired-side: no client %q", *pairedSide)
	}
	clients[1] = *pairedSide
	pairedRuns(b, clients, clients, PairedQueries)
}

// BenchmarkQueryRowNull measures the paired method itself: the runs of
// BenchmarkQueryRowPaired's query=select1 with lib/pq on both sides, each
// through pools of its own, labelled libpq-1 and libpq-2. Its ratios
// differ from 1 only by the method's bias and noise (which side a
// backend's placement favoured, which turn a collection fell in): the
// spread a paired ratio of two drivers shows beyond it is theirs.
func BenchmarkQueryRowNull(b *testing.B) {
	pairedRuns(b, [2]string{LibPQ, LibPQ}, [2]string{LibPQ + "-1", LibPQ + "-2"}, []string{PairedSelectOne})
}

// pairedRuns runs BenchmarkQueryRowPaired's rounds of each kind of query
// with clients on its two sides, reporting each side's figures under its
// label.
func pairedRuns(b *testing.B, clients, labels [len(PairedClients)]string, kinds []string) {
	env := setup(b)
	ctx := context.Background()
	lookup := "SELECT id FROM " + env.table + " WHERE id = $1"
	lookupLiteral := "SELECT id FROM " + env.table + " WHERE id = 1"
	for _, kind := range kinds {
		b.Run("query="+kind, func(b *testing.B) {
			// New pools, and so new server sessions, for every run: a
			// session's backend keeps where the machine placed it for
			// its life, and one placed worse than the other side's would
			// bias every round that shared it. Connecting and a warm-up
			// turn are off the clock; the run's Cleanup closes them.
			var pools [len(PairedClients)]*sql.DB
			for i, name := range clients {
				pools[i] = open(b, clientNamed(name), env).(SQLConn).DB
			}
			var sides [len(PairedClients)]rowQueryer
			for i, db := range pools {
				sides[i] = db
				if kind == PairedSelectOneTx {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						b.Fatal(err)
					}
					// Nothing was written: rolling back ends it as well as
					// Commit would, and cannot fail for a conflict.
					defer func() { _ = tx.Rollback() }()
					sides[i] = tx
				}
			}
			qctx := ctx
			if kind == PairedArgCtx {
				var cancel context.CancelFunc
				qctx, cancel = context.WithCancel(ctx)
				defer cancel()
			}
			var wall, cpu [len(PairedClients)]time.Duration
			var got int
			// turn runs k queries on side s, the i-th asking for i where
			// the query has an argument.
			turn := func(s, k, from int) {
				start, c0 := time.Now(), processCPU()
				for i := from; i < from+k; i++ {
					var row *sql.Row
					switch kind {
					case PairedArg, PairedArgCtx:
						row = sides[s].QueryRowContext(qctx, "SELECT $1::int", i)
					case PairedLookup:
						row = sides[s].QueryRowContext(qctx, lookup, i%env.rows+1)
					case PairedLookupLiteral:
						row = sides[s].QueryRowContext(qctx, lookupLiteral)
					default:
						row = sides[s].QueryRowContext(qctx, "SELECT 1")
					}
					if err := row.Scan(&got); err != nil {
						b.Fatalf("%s: %v", labels[s], err)
					}
				}
				cpu[s] += processCPU() - c0
				wall[s] += time.Since(start)
			}
			for s := range sides {
				turn(s, PairedBlock, 0)
				wall[s], cpu[s] = 0, 0
			}
			// The GC of what came before is not this round's.
			runtime.GC()
			b.ResetTimer()
			for done, t := 0, 0; done < b.N; t++ {
				k := min(PairedBlock, b.N-done)
				first := t % 2
				turn(first, k, done)
				turn(1-first, k, done)
				done += k
			}
			b.StopTimer()
			for s, name := range labels {
				b.ReportMetric(float64(wall[s].Nanoseconds())/float64(b.N), name+"-ns/query")
				if cpu[s] > 0 {
					b.ReportMetric(float64(cpu[s].Nanoseconds())/float64(b.N), name+"-cpu-ns/query")
				}
			}
			if wall[0] > 0 {
				b.ReportMetric(float64(wall[1])/float64(wall[0]), "time-ratio")
			}
			if cpu[0] > 0 && cpu[1] > 0 {
				b.ReportMetric(float64(cpu[1])/float64(cpu[0]), "cpu-ratio")
			}
		})
	}
}
