package bench

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream/internal/dataset"
)

// sessionCounter reads pg_stat_database.sessions, the sessions the server
// has started for the benchmark's database, over a connection of its own
// that is open before the first reading: the difference between two
// readings is the connections the clients opened in between. A backend
// publishes its session when it first goes idle, so a connection that ran
// a query is counted.
type sessionCounter struct {
	db *sql.DB
	// ok is false on a server without the column (PostgreSQL 13 and
	// older): the sessions metrics are then left out.
	ok bool
}

func newSessionCounter(b *testing.B, env *pgEnv) *sessionCounter {
	b.Helper()
	db, err := sql.Open("postgres", env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	b.Cleanup(func() { _ = db.Close() })
	s := &sessionCounter{db: db, ok: true}
	if _, err := s.read(); err != nil {
		b.Logf("no session count (PostgreSQL 14 or later has it): %v", err)
		s.ok = false
	}
	return s
}

func (s *sessionCounter) read() (int64, error) {
	var n int64
	err := s.db.QueryRow("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").Scan(&n)
	return n, err
}

// since reports the sessions started since before, per op and per second
// of elapsed when elapsed is not zero.
func (s *sessionCounter) since(b *testing.B, before int64, ops int, elapsed time.Duration) {
	b.Helper()
	if !s.ok {
		return
	}
	after, err := s.read()
	if err != nil {
		b.Fatal(err)
	}
	if ops > 0 {
		b.ReportMetric(float64(after-before)/float64(ops), "sessions/op")
	}
	if elapsed > 0 {
		b.ReportMetric(float64(after-before)/elapsed.Seconds(), "sessions/s")
	}
}

func (s *sessionCounter) start(b *testing.B) int64 {
	b.Helper()
	if !s.ok {
		return 0
	}
	n, err := s.read()
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// earlyCloseNext queries the whole table on conn, reads one row, closes,
// and runs the next query b.N times; it reports ns/op (all of it),
// ns/close and ns/next (the next query, which pays for a connection the
// close cut) and sessions/op.
func earlyCloseNext(b *testing.B, conn Conn, env *pgEnv) {
	ctx := context.Background()
	query := dataset.Select(env.table, env.rows)
	sessions := newSessionCounter(b, env)
	b.ReportAllocs()
	var closing time.Time
	var closeTotal, nextTotal time.Duration
	fn := func([]byte) bool {
		closing = time.Now()
		return false
	}
	before := sessions.start(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := conn.Stream(ctx, query, fn); err != nil {
			b.Fatal(err)
		}
		next := time.Now()
		closeTotal += next.Sub(closing)
		if err := conn.SelectOne(ctx); err != nil {
			b.Fatalf("the query after the early close: %v", err)
		}
		nextTotal += time.Since(next)
	}
	b.StopTimer()
	b.ReportMetric(float64(closeTotal.Nanoseconds())/float64(b.N), "ns/close")
	b.ReportMetric(float64(nextTotal.Nanoseconds())/float64(b.N), "ns/next")
	sessions.since(b, before, b.N, 0)
}

// BenchmarkEarlyCloseNext protects what giving up on a large result costs
// the application, the next query on the same pool included: ns/op
// (query, one row, Close, SELECT 1) and sessions/op, the connections the
// server had to start for it. The portal mode's goal (the default): 0.3
// ms on loopback and no new session; the cursor modes': a couple of
// milliseconds and no new session; the single-statement mode pays a
// reconnect, lib/pq and pgx the whole rest of the result.
func BenchmarkEarlyCloseNext(b *testing.B) {
	env := setup(b)
	for _, name := range EarlyCloseNextClients {
		b.Run("client="+name, func(b *testing.B) {
			earlyCloseNext(b, open(b, clientNamed(name), env), env)
		})
	}
}

// BenchmarkEarlyCloseTx protects an early close inside a transaction begun
// with BeginTx, where the single-statement mode cannot cut the connection
// and so drains like lib/pq: ns/op covers BeginTx, the query, one row,
// Close and Commit; ns/close is Close alone; sessions/op counts the
// connections the server started. Commit succeeding shows the
// transaction survived the close.
func BenchmarkEarlyCloseTx(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	query := dataset.Select(env.table, env.rows)
	for _, name := range EarlyCloseTxClients {
		b.Run("client="+name, func(b *testing.B) {
			db := open(b, clientNamed(name), env).(SQLConn).DB
			earlyCloseInTx(b, env, query, func() (queryer, func() error, error) {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					return nil, nil, err
				}
				return tx, tx.Commit, nil
			})
		})
	}
}

// BenchmarkEarlyCloseBegin is BenchmarkEarlyCloseTx with the transaction
// begun by Exec("BEGIN") and ended by Exec("COMMIT") on one sql.Conn, as
// code that manages its transactions in SQL does: database/sql does not
// know of the transaction, so jsonstream has to learn of it from the
// server before it closes early, and must leave it open.
func BenchmarkEarlyCloseBegin(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	query := dataset.Select(env.table, env.rows)
	for _, name := range EarlyCloseBeginClients {
		b.Run("client="+name, func(b *testing.B) {
			db := open(b, clientNamed(name), env).(SQLConn).DB
			conn, err := db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			commit := func() error {
				_, err := conn.ExecContext(ctx, "COMMIT")
				return err
			}
			earlyCloseInTx(b, env, query, func() (queryer, func() error, error) {
				if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
					return nil, nil, err
				}
				return conn, commit, nil
			})
		})
	}
}

// earlyCloseInTx runs b.N transactions that begin begins: in each, a
// query for all rows, one row read, Close and commit. It reports ns/op
// (all of it), ns/close (Close alone) and sessions/op.
func earlyCloseInTx(b *testing.B, env *pgEnv, query string, begin func() (q queryer, commit func() error, err error)) {
	ctx := context.Background()
	sessions := newSessionCounter(b, env)
	b.ReportAllocs()
	var closeTotal time.Duration
	before := sessions.start(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q, commit, err := begin()
		if err != nil {
			b.Fatal(err)
		}
		rows, err := q.QueryContext(ctx, query)
		if err != nil {
			b.Fatal(err)
		}
		if !rows.Next() {
			b.Fatalf("no first row: %v", rows.Err())
		}
		closing := time.Now()
		if err := rows.Close(); err != nil {
			b.Fatal(err)
		}
		closeTotal += time.Since(closing)
		if err := commit(); err != nil {
			b.Fatalf("commit after the early close: %v", err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(closeTotal.Nanoseconds())/float64(b.N), "ns/close")
	sessions.since(b, before, b.N, 0)
}

// churnTime is how long BenchmarkChurn's workers start queries.
func churnTime() time.Duration {
	if testing.Short() {
		return ChurnTime / 10
	}
	return ChurnTime
}

// BenchmarkChurn protects the throughput of a service that often gives up
// on large results: ChurnWorkers goroutines on one pool, each looping
// "query the whole table, read ChurnRows rows, Close" for ChurnTime. It
// reports queries/s and sessions/s, the connections the server had to
// start per second; ns/op is the wall time per query. The pool keeps
// ChurnWorkers idle connections, so that connections are only replaced
// when a close costs one. The cursor modes' goal: ten times the
// single-statement mode's queries/s, with no new sessions; the portal
// mode's (the default): at least the cursor mode's queries/s, with no new
// sessions.
//
// Each iteration is a whole run of ChurnTime; the queries in flight at its
// end are finished and counted, and so is the time they take.
func BenchmarkChurn(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	query := dataset.Select(env.table, env.rows)
	for _, name := range ChurnClients {
		b.Run("client="+name, func(b *testing.B) {
			db := open(b, clientNamed(name), env).(SQLConn)
			db.DB.SetMaxOpenConns(ChurnWorkers)
			db.DB.SetMaxIdleConns(ChurnWorkers)
			fillPool(b, db.DB, ChurnWorkers)
			sessions := newSessionCounter(b, env)
			b.ReportAllocs()
			var queries atomic.Int64
			var elapsed time.Duration
			before := sessions.start(b)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				begin := time.Now()
				deadline := begin.Add(churnTime())
				var wg sync.WaitGroup
				errs := make(chan error, ChurnWorkers)
				for w := 0; w < ChurnWorkers; w++ {
					wg.Add(1)
					// A worker of the churn; it stops at the deadline or at
					// its first error.
					go func() {
						defer wg.Done()
						for time.Now().Before(deadline) {
							got := 0
							err := db.Stream(ctx, query, func([]byte) bool {
								got++
								return got < ChurnRows
							})
							if err != nil {
								errs <- err
								return
							}
							if got != ChurnRows {
								errs <- fmt.Errorf("read %d rows, want %d", got, ChurnRows)
								return
							}
							queries.Add(1)
						}
					}()
				}
				wg.Wait()
				elapsed += time.Since(begin)
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			n := queries.Load()
			if n == 0 {
				b.Fatal("no query finished")
			}
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(n), "ns/op")
			b.ReportMetric(float64(n)/elapsed.Seconds(), "queries/s")
			sessions.since(b, before, 0, elapsed)
		})
	}
}

// fillPool opens n connections on db at once and returns them to its
// pool, so that a benchmark starts with the pool it will use.
func fillPool(b *testing.B, db *sql.DB, n int) {
	b.Helper()
	var conns []*sql.Conn
	for i := 0; i < n; i++ {
		c, err := db.Conn(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// drain streams n rows b.N times through conn and reports what counter
// does, the server's CPU per row included when the server backend can be
// read: the queries then run on one connection of conn's pool, the one
// whose pid was asked for.
func drain(b *testing.B, conn Conn, query string, n int) {
	ctx := context.Background()
	conn, backend, ok, release := pinBackend(b, conn)
	defer release()
	b.ReportAllocs()
	var c counter
	if ok {
		c.backend = &backend
	}
	var got int
	fn := func(data []byte) bool {
		got++
		c.bytes += int64(len(data))
		return true
	}
	c.begin(b)
	for i := 0; i < b.N; i++ {
		got = 0
		if err := conn.Stream(ctx, query, fn); err != nil {
			b.Fatal(err)
		}
		if got != n {
			b.Fatalf("streamed %d rows, want %d", got, n)
		}
		c.rows += int64(got)
	}
	c.report(b)
}

// BenchmarkFetch protects the modes' throughput on complete results: rows/s,
// client CPU per row, allocs/row and, with the server on this machine,
// the server backend's CPU per row (server-cpu-ns/row). The default
// (portal) mode's goal: lib/pq's rows/s within 2%, and its client and
// server CPU per row. FetchAuto's: within 5% of the single statement at
// 100,000 rows and more, where its batches have grown.
func BenchmarkFetch(b *testing.B) {
	env := setup(b)
	for _, n := range SizesUpTo(FetchSizes, env.rows) {
		query := dataset.Select(env.table, n)
		for _, name := range FetchClients {
			b.Run(fmt.Sprintf("rows=%d/client=%s", n, name), func(b *testing.B) {
				drain(b, open(b, clientNamed(name), env), query, n)
			})
		}
	}
}

// BenchmarkQueryRow protects the cost of a one-row query (a document by
// its id, with QueryRow), where the cursor modes pay their extra round
// trips (BEGIN, DECLARE, FETCH, CLOSE, COMMIT) in full: ns/op, cpu-ns/op
// and allocs/op of each mode against the single-statement mode and
// lib/pq.
func BenchmarkQueryRow(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	query := "SELECT data FROM v_" + env.table + " WHERE id = $1"
	for _, name := range FetchClients {
		b.Run("client="+name, func(b *testing.B) {
			db := open(b, clientNamed(name), env).(SQLConn).DB
			var data []byte
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				if err := db.QueryRowContext(ctx, query, i%env.rows+1).Scan(&data); err != nil {
					b.Fatal(err)
				}
			}
			reportCPUPerOp(b, cpu)
		})
	}
}

// reportCPUPerOp reports the process's CPU time since cpu per iteration:
// the client's cost, which other processes' load moves much less than
// wall time.
func reportCPUPerOp(b *testing.B, cpu time.Duration) {
	b.StopTimer()
	if cpu := processCPU() - cpu; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkSelectOne protects the price of the early-close machinery on
// the most common query: QueryRow("SELECT 1"), which closes its rows
// before reading to their end, through jsonstream in its default mode, in
// the single-statement mode and through lib/pq, with a background context
// and with a cancellable one (for which lib/pq starts a goroutine per
// query). Both wall time (ns/op) and client CPU (cpu-ns/op) are the
// numbers; the single-statement mode's goal is lib/pq within 2% in each.
// The default mode's is BenchmarkQueryRowPaired's, whose ratios are
// taken within one process.
func BenchmarkSelectOne(b *testing.B) {
	env := setup(b)
	for _, kind := range []string{"background", "cancel"} {
		for _, name := range SelectOneClients {
			b.Run("ctx="+kind+"/client="+name, func(b *testing.B) {
				ctx := context.Background()
				if kind == "cancel" {
					var cancel context.CancelFunc
					ctx, cancel = context.WithCancel(ctx)
					defer cancel()
				}
				conn := open(b, clientNamed(name), env)
				b.ReportAllocs()
				// The GC of whatever came before is not this benchmark's.
				runtime.GC()
				b.ResetTimer()
				cpu := processCPU()
				for i := 0; i < b.N; i++ {
					if err := conn.SelectOne(ctx); err != nil {
						b.Fatal(err)
					}
				}
				reportCPUPerOp(b, cpu)
			})
		}
	}
}

// BenchmarkProxy protects the modes on a network with round trips that
// cost: the same drains as BenchmarkFetch and the early close of
// BenchmarkEarlyCloseNext, through a DelayProxy that holds each direction
// for ProxyDelay. A fixed fetch size pays a round trip per batch;
// FetchAuto's growing batches should hide most of them, and the portal
// mode's window of two Executes all of them (its goal: lib/pq's rows/s
// within 5%, and an early close and the next query in 4 round trips). The
// smaller results show what the round trips of a stream's first batches
// cost before its window is full.
func BenchmarkProxy(b *testing.B) {
	env := setup(b)
	target, err := ServerAddr(env.dsn)
	if err != nil {
		b.Skip(err)
	}
	through := func(b *testing.B, name string) Conn { return throughProxy(b, env, target, name) }
	for _, n := range SizesUpTo(FetchSizes, env.rows) {
		query := dataset.Select(env.table, n)
		for _, name := range ProxyClients {
			b.Run(fmt.Sprintf("rows=%d/client=%s", n, name), func(b *testing.B) {
				drain(b, through(b, name), query, n)
			})
		}
	}
	for _, name := range ProxyClients {
		b.Run("early-close/client="+name, func(b *testing.B) {
			earlyCloseNext(b, through(b, name), env)
		})
	}
}

// throughProxy opens client name through a DelayProxy of its own to
// target, the server of env, for b's run.
func throughProxy(b *testing.B, env *pgEnv, target, name string) Conn {
	b.Helper()
	proxy, err := StartDelayProxy(target, ProxyDelay)
	if err != nil {
		b.Fatal(err)
	}
	// Registered before open's cleanup, so run after it: the clients
	// close their connections, then the proxy goes.
	b.Cleanup(func() { _ = proxy.Close() })
	dsn, err := WithAddr(env.dsn, proxy.Addr())
	if err != nil {
		b.Fatal(err)
	}
	return open(b, clientNamed(name), &pgEnv{dsn: dsn, table: env.table, rows: env.rows})
}
