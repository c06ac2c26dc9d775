package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/dataset"
)

// counter measures what a benchmark loop streamed, for the metrics that
// testing does not compute itself.
type counter struct {
	rows, bytes int64
	firstRow    time.Duration
	mallocs     uint64
	start       time.Time
	cpu         time.Duration
	// backend, when set, reads the CPU time of the server backend that
	// runs the benchmark's queries; serverCPU is its reading at begin.
	backend   *backendCPU
	serverCPU time.Duration
}

// begin is called with the timer reset, right before the loop.
func (c *counter) begin(b *testing.B) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c.mallocs = ms.Mallocs
	if c.backend != nil {
		if v, ok := c.backend.read(); ok {
			c.serverCPU = v
		} else {
			c.backend = nil
		}
	}
	b.ResetTimer()
	c.cpu = processCPU()
	c.start = time.Now()
}

// report ends the loop and reports rows/s, MB/s (of document text, 10^6
// bytes as testing counts them), allocs/row and cpu-ns/row. The last is
// the CPU time of the client process per row: the server's work is
// nearly the same for every client, so what tells clients apart is this,
// and unlike wall time it hardly moves when other processes load the
// machine. With a backend to read, it adds server-cpu-ns/row, the CPU
// time of the server backend per row: what is left of the server's work
// that the client's protocol decides.
func (c *counter) report(b *testing.B) {
	elapsed := time.Since(c.start)
	cpu := processCPU() - c.cpu
	b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if c.rows == 0 || elapsed <= 0 {
		return
	}
	b.ReportMetric(float64(c.rows)/elapsed.Seconds(), "rows/s")
	if c.bytes > 0 {
		b.ReportMetric(float64(c.bytes)/1e6/elapsed.Seconds(), "MB/s")
	}
	b.ReportMetric(float64(ms.Mallocs-c.mallocs)/float64(c.rows), "allocs/row")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(c.rows), "cpu-ns/row")
	}
	if c.backend != nil {
		if v, ok := c.backend.read(); ok && v > c.serverCPU {
			b.ReportMetric(float64((v-c.serverCPU).Nanoseconds())/float64(c.rows), "server-cpu-ns/row")
		}
	}
}

// BenchmarkStream protects each client's streaming throughput (rows/s,
// MB/s), its client CPU per row (cpu-ns/row), its time to first row
// (ns/first-row) and allocs/row: the report's headline is jsonstream's
// rows/s and CPU per row against lib/pq's at each size.
func BenchmarkStream(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	for _, n := range env.sizes {
		query := dataset.Select(env.table, n)
		for _, client := range Clients {
			b.Run(fmt.Sprintf("rows=%d/client=%s", n, client.Name), func(b *testing.B) {
				conn := open(b, client, env)
				b.ReportAllocs()
				var c counter
				var got int
				var start time.Time
				fn := func(data []byte) bool {
					if got == 0 {
						c.firstRow += time.Since(start)
					}
					got++
					c.bytes += int64(len(data))
					return true
				}
				c.begin(b)
				for i := 0; i < b.N; i++ {
					got, start = 0, time.Now()
					if err := conn.Stream(ctx, query, fn); err != nil {
						b.Fatal(err)
					}
					if got != n {
						b.Fatalf("streamed %d rows, want %d", got, n)
					}
					c.rows += int64(got)
				}
				c.report(b)
				b.ReportMetric(float64(c.firstRow.Nanoseconds())/float64(b.N), "ns/first-row")
			})
		}
	}
}

// BenchmarkEarlyClose protects the cost of giving up on a large result
// after its first row: ns/op covers the query, the row and the close;
// ns/close is the close alone. lib/pq and pgx read the rest of the result
// to close it; jsonstream's default portal mode reads off the batches in
// flight, closes the portal and keeps the connection.
func BenchmarkEarlyClose(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	query := dataset.Select(env.table, env.rows)
	for _, client := range Clients {
		b.Run("client="+client.Name, func(b *testing.B) {
			conn := open(b, client, env)
			b.ReportAllocs()
			var closing time.Time
			var closeTotal time.Duration
			fn := func([]byte) bool {
				closing = time.Now()
				return false
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := conn.Stream(ctx, query, fn); err != nil {
					b.Fatal(err)
				}
				closeTotal += time.Since(closing)
			}
			b.StopTimer()
			b.ReportMetric(float64(closeTotal.Nanoseconds())/float64(b.N), "ns/close")
		})
	}
}

// BenchmarkCeiling protects the reference the clients are held against:
// how fast the server hands out the same documents at all, with nothing
// done to them on arrival (rows/s, MB/s). method=copy pours
// COPY (query) TO STDOUT into a counting io.Discard; method=pgconn reads
// the query's rows with pgx's protocol layer alone, in the text format
// lib/pq uses, looking at nothing but their length. The report takes the
// faster of the two as the ceiling.
func BenchmarkCeiling(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	for _, n := range env.sizes {
		query := dataset.Select(env.table, n)
		b.Run(fmt.Sprintf("rows=%d/method=copy", n), func(b *testing.B) {
			conn := connectPgx(b, env)
			copySQL := "COPY (" + query + ") TO STDOUT"
			var w countingWriter
			b.ReportAllocs()
			var c counter
			c.begin(b)
			for i := 0; i < b.N; i++ {
				tag, err := conn.PgConn().CopyTo(ctx, &w, copySQL)
				if err != nil {
					b.Fatal(err)
				}
				if tag.RowsAffected() != int64(n) {
					b.Fatalf("copied %d rows, want %d", tag.RowsAffected(), n)
				}
				c.rows += int64(n)
			}
			// COPY ends each row with a newline that the other clients do
			// not receive.
			c.bytes = w.n - c.rows
			c.report(b)
		})
		b.Run(fmt.Sprintf("rows=%d/method=pgconn", n), func(b *testing.B) {
			conn := connectPgx(b, env)
			b.ReportAllocs()
			var c counter
			c.begin(b)
			for i := 0; i < b.N; i++ {
				rr := conn.PgConn().ExecParams(ctx, query, nil, nil, nil, nil)
				got := 0
				for rr.NextRow() {
					c.bytes += int64(len(rr.Values()[0]))
					got++
				}
				if _, err := rr.Close(); err != nil {
					b.Fatal(err)
				}
				if got != n {
					b.Fatalf("read %d rows, want %d", got, n)
				}
				c.rows += int64(got)
			}
			c.report(b)
		})
	}
}

func connectPgx(b *testing.B, env *pgEnv) *pgx.Conn {
	b.Helper()
	conn, err := pgx.Connect(context.Background(), env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// decodeSize is the result size of BenchmarkDecode: decoding costs about
// ten times what streaming does, so a smaller result gives as steady a
// number in less time.
func decodeSize(env *pgEnv) int {
	if testing.Short() {
		return min(1_000, env.rows)
	}
	return min(100_000, env.rows)
}

// BenchmarkDecode protects the cost of the common consumer: every
// document decoded into a dataset.Entity with encoding/json (rows/s,
// allocs/row). client=jsonstream-each decodes with jsonstream.Each
// instead of a hand-written loop.
func BenchmarkDecode(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	n := decodeSize(env)
	query := dataset.Select(env.table, n)
	for _, client := range Clients {
		b.Run("client="+client.Name, func(b *testing.B) {
			conn := open(b, client, env)
			b.ReportAllocs()
			var c counter
			var got int
			var sum float64
			var decodeErr error
			fn := func(data []byte) bool {
				// A new value per row, as a consumer keeping the results has.
				var e dataset.Entity
				if err := json.Unmarshal(data, &e); err != nil {
					decodeErr = err
					return false
				}
				sum += e.Score
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
				if decodeErr != nil {
					b.Fatal(decodeErr)
				}
				if got != n {
					b.Fatalf("decoded %d rows, want %d", got, n)
				}
				c.rows += int64(got)
			}
			c.report(b)
			sink = sum
		})
	}
	b.Run("client=jsonstream-each", func(b *testing.B) {
		db := open(b, clientNamed(Jsonstream), env).(SQLConn).DB
		b.ReportAllocs()
		var c counter
		var sum float64
		c.begin(b)
		for i := 0; i < b.N; i++ {
			rows, err := db.QueryContext(ctx, query)
			if err != nil {
				b.Fatal(err)
			}
			got := 0
			for e, err := range jsonstream.Each[dataset.Entity](rows) {
				if err != nil {
					b.Fatal(err)
				}
				sum += e.Score
				got++
			}
			if got != n {
				b.Fatalf("decoded %d rows, want %d", got, n)
			}
			c.rows += int64(got)
		}
		c.report(b)
		sink = sum
	})
}

func clientNamed(name string) Client {
	c, ok := ClientNamed(name)
	if !ok {
		panic("bench: no client " + name)
	}
	return c
}

// sink keeps the decoded values observable, so the compiler cannot drop
// the decoding.
var sink float64
