package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream/internal/dataset"
	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestMain stops the throwaway server, if a benchmark started one.
func TestMain(m *testing.M) {
	code := m.Run()
	server.mu.Lock()
	if server.srv != nil {
		if err := server.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		server.stopWatch()
	}
	server.mu.Unlock()
	os.Exit(code)
}

// pgEnv is the server and dataset the real-server benchmarks share.
type pgEnv struct {
	dsn   string
	table string
	// rows is how many documents the benchmarks stream at most; the table
	// holds at least that many.
	rows int
	// sizes are the entries of Sizes up to rows, or rows itself when it
	// is smaller than all of them.
	sizes []int
}

// server is started once per process, by the first benchmark that needs
// it, so that benchmarks on the fake driver alone never wait for it.
var server struct {
	mu        sync.Mutex
	tried     bool
	srv       *pgtest.Server
	stopWatch func()
	env       *pgEnv
	err       error
	skip      bool
	// loaded is how many documents the table is known to hold: tests
	// load a few, the benchmarks env.rows.
	loaded int
}

// setup returns the shared server and dataset: those of cmd/report when it
// set EnvDSN, else a throwaway server loaded here. Without PostgreSQL
// binaries it skips the benchmark, except under CI.
func setup(b *testing.B) *pgEnv {
	b.Helper()
	return setupLoaded(b, func(env *pgEnv) int { return env.rows })
}

// setupSample is setup for a test that reads the first n documents: it
// loads n rather than the benchmarks' dataset, unless that is there.
func setupSample(t *testing.T, n int) *pgEnv {
	t.Helper()
	return setupLoaded(t, func(env *pgEnv) int { return min(n, env.rows) })
}

// setupLoaded starts the server once per process and loads the dataset
// when it holds fewer than want(env) documents.
func setupLoaded(tb testing.TB, want func(env *pgEnv) int) *pgEnv {
	tb.Helper()
	server.mu.Lock()
	defer server.mu.Unlock()
	if !server.tried {
		server.tried = true
		server.env, server.skip, server.err = start()
	}
	switch {
	case server.skip && !inCI():
		tb.Skip(server.err)
	case server.err != nil:
		tb.Fatal(server.err)
	}
	if n := want(server.env); server.loaded < n {
		if err := ensureDataset(server.env.dsn, server.env.table, n); err != nil {
			tb.Fatal(err)
		}
		server.loaded = n
	}
	return server.env
}

func start() (env *pgEnv, skip bool, err error) {
	def := DefaultRows
	if testing.Short() {
		def = ShortRows
	}
	rows, err := RowsFromEnv(def)
	if err != nil {
		return nil, false, err
	}
	dsn := os.Getenv(EnvDSN)
	if dsn == "" {
		srv, err := pgtest.Start(pgtest.Options{})
		if errors.Is(err, pgtest.ErrNoServer) {
			return nil, true, fmt.Errorf("%w\n%s", err, pgtest.InstallHint)
		}
		if err != nil {
			return nil, false, err
		}
		server.srv, server.stopWatch = srv, srv.StopOnSignal()
		dsn = srv.DSN()
	}
	env = &pgEnv{dsn: dsn, table: dataset.DefaultTable, rows: rows}
	for _, n := range Sizes {
		if n <= rows {
			env.sizes = append(env.sizes, n)
		}
	}
	if len(env.sizes) == 0 {
		env.sizes = []int{rows}
	}
	return env, false, nil
}

// ensureDataset loads the dataset unless the server holds enough of it
// already, as it does when cmd/report started this process.
func ensureDataset(dsn, table string, rows int) error {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx := context.Background()
	have, err := dataset.Loaded(ctx, db, table)
	if err != nil || have >= rows {
		return err
	}
	begin := time.Now()
	if err := dataset.Load(ctx, db, table, rows, nil); err != nil {
		return err
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "bench: loaded %d documents in %v\n", rows, time.Since(begin).Round(time.Millisecond))
	}
	return nil
}

// inCI reports whether we run in CI, where a benchmark that cannot reach
// a server must fail rather than skip and hide that it never ran.
func inCI() bool {
	v := strings.TrimSpace(os.Getenv("CI"))
	return v == "1" || strings.EqualFold(v, "true")
}

// open connects client c to the shared server, for the benchmark's
// lifetime.
func open(b *testing.B, c Client, env *pgEnv) Conn {
	b.Helper()
	conn, err := c.Open(context.Background(), env.dsn)
	if err != nil {
		b.Fatalf("%s: %v", c.Name, err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	// The first query of a connection pays for what later ones find ready
	// (pgx loads type information, database/sql fills its pools); keep it
	// off the clock.
	if err := conn.Stream(context.Background(), "SELECT data FROM "+env.table+" LIMIT 1", func([]byte) bool { return true }); err != nil {
		b.Fatalf("%s: %v", c.Name, err)
	}
	return conn
}
