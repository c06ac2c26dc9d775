package bench

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/jsonstream/jsonstream"
)

// BenchmarkResumeKeyCheck protects what a resume key costs a stream that
// never fails: the check that every row's key follows the last. It
// drains SELECT id, data … ORDER BY id (the dataset's table) with and
// without WithResumeKey(Asc("id")) on one pool, and reports
// cpu-ns/row; the goal is at most 1.02 times the stream without a key.
func BenchmarkResumeKeyCheck(b *testing.B) {
	env := setup(b)
	db, err := sql.Open("jsonstream", env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	// No LIMIT, which a resume key refuses: the whole table, whose size
	// cpu-ns/row does not depend on.
	query := fmt.Sprintf("SELECT id, data FROM v_%s ORDER BY id", env.table)
	for _, key := range []bool{false, true} {
		b.Run(fmt.Sprintf("key=%v", key), func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			var n int64
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				var args []any
				if key {
					s, err := jsonstream.NewStream(jsonstream.WithResumeKey(jsonstream.Asc("id")))
					if err != nil {
						b.Fatal(err)
					}
					args = append(args, s)
				}
				rows, err := db.QueryContext(ctx, query, args...)
				if err != nil {
					b.Fatal(err)
				}
				var id int64
				var data sql.RawBytes
				for rows.Next() {
					if err := rows.Scan(&id, &data); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if err := rows.Err(); err != nil {
					b.Fatal(err)
				}
				_ = rows.Close()
			}
			b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(n), "cpu-ns/row")
		})
	}
}

// BenchmarkResumeAfterFailure protects how fast a resumable stream gets
// past the end of its session: each op streams with WithResumeKey, has
// its backend terminated after 100 rows, and reads on to its
// continuation and to 200 rows at least. It
// reports the median and the 95th percentile of Event.Continued, the time
// from the failure to the continuation's first row, which includes
// connecting anew, and the median time to connect (connect-ns); the goal
// is 20 ms plus the connect time at the 95th.
func BenchmarkResumeAfterFailure(b *testing.B) {
	env := setup(b)
	db, err := sql.Open("jsonstream", env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	monitor, err := sql.Open("postgres", env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer monitor.Close()
	ctx := context.Background()
	connect := connectTime(b, env.dsn)
	query := fmt.Sprintf("SELECT id, data FROM v_%s ORDER BY id", env.table)
	var mu sync.Mutex
	var took []time.Duration
	obs := jsonstream.ObserverFunc(func(e jsonstream.Event) {
		if e.Kind == jsonstream.EventContinued {
			mu.Lock()
			took = append(took, e.Continued)
			mu.Unlock()
		}
	})
	for i := 0; i < b.N; i++ {
		conn, err := db.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var pid int
		if err := conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			b.Fatal(err)
		}
		s, err := jsonstream.NewStream(jsonstream.WithResumeKey(jsonstream.Asc("id")), jsonstream.WithObserver(obs))
		if err != nil {
			b.Fatal(err)
		}
		rows, err := conn.QueryContext(ctx, query, s)
		if err != nil {
			b.Fatal(err)
		}
		// The stream reads on past what was in flight when the backend
		// went, up to the failure and the continuation's rows.
		mu.Lock()
		before := len(took)
		mu.Unlock()
		for n := 1; rows.Next(); n++ {
			if n == 100 {
				if _, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid); err != nil {
					b.Fatal(err)
				}
			}
			mu.Lock()
			continued := len(took) > before
			mu.Unlock()
			if n >= 200 && continued {
				break
			}
		}
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		_ = rows.Close()
		_ = conn.Close()
	}
	b.StopTimer()
	if len(took) != b.N {
		b.Fatalf("%d continuations in %d failures", len(took), b.N)
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "continued-p50-ns")
	b.ReportMetric(float64(took[(len(took)*95+99)/100-1].Nanoseconds()), "continued-p95-ns")
	b.ReportMetric(float64(connect.Nanoseconds()), "connect-ns")
}

// connectTime is the median time a jsonstream connection to dsn takes to
// open, over 9 connections.
func connectTime(b *testing.B, dsn string) time.Duration {
	b.Helper()
	c, err := jsonstream.NewDriver(pq.Driver{})
	if err != nil {
		b.Fatal(err)
	}
	connector, err := c.OpenConnector(dsn)
	if err != nil {
		b.Fatal(err)
	}
	var times []time.Duration
	for i := 0; i < 9; i++ {
		start := time.Now()
		conn, err := connector.Connect(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
		_ = conn.Close()
	}
	slices.Sort(times)
	return times[len(times)/2]
}
