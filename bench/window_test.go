package bench

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream/internal/dataset"
)

// BenchmarkProxyWindow measures what the portal mode's window of
// Executes is for: that the server never waits for the client. While a
// client drains the largest result through a DelayProxy, another
// connection samples the draining backend's wait_event in
// pg_stat_activity every WindowSample; server-wait-% is the share of the
// samples in which it waited to read from the client (ClientRead). A
// single statement never does; a cursor does between its FETCHes, and a
// window too small for the link between its Executes. The sampling costs
// the server CPU, so rows/s is left to BenchmarkProxy.
func BenchmarkProxyWindow(b *testing.B) {
	env := setup(b)
	target, err := ServerAddr(env.dsn)
	if err != nil {
		b.Skip(err)
	}
	mon, err := sql.Open("postgres", env.dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = mon.Close() }()
	mon.SetMaxOpenConns(1)
	n := SizesUpTo(FetchSizes[1:], env.rows)
	query := dataset.Select(env.table, n[len(n)-1])
	for _, name := range ProxyWindowClients {
		b.Run("client="+name, func(b *testing.B) {
			conn, pid, release := pinPid(b, throughProxy(b, env, target, name))
			defer release()
			var waits, samples int
			for i := 0; i < b.N; i++ {
				w, s := sampleWaits(b, mon, pid, func() error {
					return conn.Stream(context.Background(), query, func([]byte) bool { return true })
				})
				waits += w
				samples += s
			}
			if samples == 0 {
				b.Fatal("no sample of the backend while it streamed")
			}
			b.ReportMetric(100*float64(waits)/float64(samples), "server-wait-%")
			b.ReportMetric(float64(samples)/float64(b.N), "samples/op")
		})
	}
}

// WindowSample is how often BenchmarkProxyWindow samples the backend.
const WindowSample = time.Millisecond

// sampleWaits runs stream while sampling backend pid's wait_event, and
// returns how many samples found it waiting in ClientRead, of how many.
func sampleWaits(b *testing.B, mon *sql.DB, pid int, stream func() error) (waits, samples int) {
	b.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sampleErr error
	wg.Add(1)
	// The sampler: one query every WindowSample until stop.
	go func() {
		defer wg.Done()
		tick := time.NewTicker(WindowSample)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var event sql.NullString
			err := mon.QueryRow(`SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&event)
			if err != nil {
				sampleErr = err
				return
			}
			samples++
			if event.String == "ClientRead" {
				waits++
			}
		}
	}()
	err := stream()
	close(stop)
	wg.Wait()
	if err != nil {
		b.Fatal(err)
	}
	if sampleErr != nil {
		b.Fatal(sampleErr)
	}
	return waits, samples
}

// pinPid returns a Conn that runs every query on one server backend, and
// that backend's pid; release returns what was taken from conn's pool.
func pinPid(b *testing.B, conn Conn) (Conn, int, func()) {
	b.Helper()
	switch c := conn.(type) {
	case SQLConn:
		sc, err := c.DB.Conn(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		var pid int
		if err := sc.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			_ = sc.Close()
			b.Fatal(err)
		}
		p := pinnedConn{sc}
		return p, pid, func() { _ = p.Close() }
	case pgxConn:
		return conn, int(c.conn.PgConn().PID()), func() {}
	}
	b.Fatalf("no backend pid for %T", conn)
	return nil, 0, nil
}
