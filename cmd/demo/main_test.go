package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestMain shares one throwaway server between the tests, stops it
// afterwards and fails the run if the demo leaked goroutines.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testRows keeps a whole run to a few seconds; with half of them left when
// the stream pauses, the pause is still a real one.
const testRows = "20000"

// cancelWithin is how soon run must return once its context ends.
const cancelWithin = 5 * time.Second

// syncBuffer lets a test read what run has written so far while run is
// still writing.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// assertNoDemoTable checks that the demo removed what it created.
func assertNoDemoTable(t *testing.T, dsn string) {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	require.NoError(t, err)
	defer db.Close()
	var n int
	err = db.QueryRow("SELECT count(*) FROM pg_class WHERE relname IN ($1, $2)", demoTable(), "v_"+demoTable()).Scan(&n)
	require.NoError(t, err)
	assert.Zero(t, n, "the demo table or its view is still there")
}

func TestDemo(t *testing.T) {
	// The environment variable rather than -dsn, so that both ways in are
	// covered; the interrupt tests use the flag.
	dsn := pgtest.DSN(t)
	t.Setenv(envDSN, dsn)
	var stdout, stderr bytes.Buffer

	err := run(context.Background(), []string{"-rows", testRows}, &stdout, &stderr)
	require.NoError(t, err, "stderr:\n%s", stderr.String())
	out := stdout.String()
	t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())

	for _, want := range []string{
		"== Loading 20,000 JSON documents",
		"== Streaming 20,000 documents into dataset.Entity values",
		"decoded 20,000 dataset.Entity values",
		"Paused by the reader after row 10,000",
		"0 rows, 0.0 MB while paused",
		"server backend   pid",
		"Resumed after",
		"== A forgotten pause: WithPauseTimeout(1s)",
		"rows.Err(): " + "jsonstream: pause timeout expired",
		"SELECT 1 on the same *sql.DB returned 1",
		"== Closing a 20,000-row result after its first row, on a pool of one connection",
		"== Summary",
		"rows streamed",
		"throughput",
		"time to first row",
		"pause timeout (1s)",
		"ErrPauseTimeout after",
		"early close after 1 row",
		"the observer saw",
	} {
		assert.Contains(t, out, want)
	}
	assert.Regexp(t, `pause\s+[\d.]+ s at row 10,000, 0 rows read while paused`, out)
	// The early close keeps the connection in the portal and cursor modes
	// and with lib/pq, and loses it in the single-statement mode.
	for way, kept := range map[string]bool{
		"jsonstream, portal (default)":   true,
		"jsonstream, cursor (FetchAuto)": true,
		"jsonstream, single statement":   false,
		"lib/pq":                         true,
	} {
		m := regexp.MustCompile(regexp.QuoteMeta(way) + ` +rows\.Close\(\) took .*\n +backend pid (\d+), then (\d+): connection (kept|cut)`).FindStringSubmatch(out)
		if !assert.NotNil(t, m, "no early close for %s", way) {
			continue
		}
		assert.Equal(t, kept, m[1] == m[2], "%s: backend pid %s, then %s", way, m[1], m[2])
		assert.Equal(t, kept, m[3] == "kept", way)
		assert.Regexp(t, `\n\s+(early close after 1 row)?\s+`+regexp.QuoteMeta(way)+` [\d.]+ [µm]?s, `+map[bool]string{true: "same", false: "new"}[kept]+` backend\n`, out)
	}
	// The stream step's pause and the forgotten one, which timed out and
	// ended its portal, keeping its connection; its stream ended
	// pause_timeout, and the streamed one complete.
	assert.Regexp(t, `the observer saw\s+[\d,]+ streams \(complete [\d,]+, .*pause_timeout 1\b.*\); [\d,]+ rows, 2 pauses \([\d.]+ m?s paused\), 1 pause timeout, 0 connections cut`, out)
	assert.Regexp(t, `server backend pid \d+ ended the query: the stream ended its portal`, out)
	assert.Regexp(t, `20,000 rows  5\.\d MB  [\d,]+ rows/s  complete`, stderr.String())
	assert.NotContains(t, out, "Starting a throwaway", "a DSN was given")

	// Not a terminal: one plain line at a time, nothing rewritten.
	for name, s := range map[string]string{"stdout": out, "stderr": stderr.String()} {
		assert.NotContains(t, s, "\r", name)
		assert.NotContains(t, s, "\x1b", name)
	}
	assertNoDemoTable(t, dsn)
}

// TestInterrupt ends the context at several points of a run against an
// existing server: run must return promptly and leave no table behind.
func TestInterrupt(t *testing.T) {
	dsn := pgtest.DSN(t)
	for _, at := range []string{
		"== Loading",
		"== A forgotten pause",
	} {
		t.Run(strings.TrimPrefix(at, "== "), func(t *testing.T) {
			interruptAt(t, at, "-dsn", dsn, "-rows", testRows)
			assertNoDemoTable(t, dsn)
		})
	}
}

// TestInterruptOwnServer ends a run on its own throwaway server while the
// stream is paused: the query is cancelled, the server stopped and its
// directory removed.
func TestInterruptOwnServer(t *testing.T) {
	if _, err := findBinDir(); err != nil {
		t.Skip(err)
	}
	t.Setenv(envDSN, "")
	tmp := isolatedTempDir(t)

	stdout := interruptAt(t, "Paused by the reader", "-rows", testRows)
	assert.Contains(t, stdout, "Starting a throwaway PostgreSQL server")
	assert.Contains(t, stdout, "Stopping the throwaway server")
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	for _, e := range entries {
		t.Errorf("left behind in the temp dir: %s", e.Name())
	}
}

// interruptAt runs the demo with args, ends its context as soon as stdout
// contains at, and checks that run returns errInterrupted in time. It
// returns stdout.
func interruptAt(t *testing.T, at string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	// The demo under test; it ends by itself, or once ctx is cancelled,
	// which is what the test checks.
	go func() { done <- run(ctx, args, &stdout, &stderr) }()

	deadline := time.After(time.Minute)
	for !strings.Contains(stdout.String(), at) {
		select {
		case err := <-done:
			t.Fatalf("run ended before %q with %v\nstdout:\n%s\nstderr:\n%s", at, err, stdout.String(), stderr.String())
		case <-deadline:
			cancel()
			err := <-done
			t.Fatalf("no %q within a minute; run then returned %v\nstdout:\n%s", at, err, stdout.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	begin := time.Now()
	select {
	case err := <-done:
		t.Logf("run returned %v after %v", err, time.Since(begin))
		assert.ErrorIs(t, err, errInterrupted)
	case <-time.After(cancelWithin):
		t.Errorf("run did not return within %v of the cancel", cancelWithin)
		t.Logf("run returned %v in the end", <-done)
	}
	return stdout.String()
}

// isolatedTempDir points TMPDIR at a directory of the test's own, to see
// that the throwaway server leaves nothing behind. Under root the server
// runs as another user, who must be able to reach it.
func isolatedTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	t.Setenv("TMPDIR", dir)
	return dir
}

func TestNoServer(t *testing.T) {
	old := findBinDir
	findBinDir = func() (string, error) {
		return "", fmt.Errorf("%w; searched nowhere", pgtest.ErrNoServer)
	}
	t.Cleanup(func() { findBinDir = old })
	t.Setenv(envDSN, "")
	var stdout, stderr bytes.Buffer

	err := run(context.Background(), []string{"-rows", "10"}, &stdout, &stderr)
	require.Error(t, err)
	assert.Contains(t, stderr.String(), pgtest.InstallHint)
	assert.Contains(t, stderr.String(), "apt-get install postgresql")
	assert.Contains(t, stderr.String(), "brew install postgresql")
	assert.Contains(t, stderr.String(), "-dsn")
	assert.Contains(t, stderr.String(), envDSN)
	assert.Empty(t, stdout.String())
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"-rows", "0"}, "-rows must be at least 1, got 0"},
		{[]string{"-rows", "-3"}, "-rows must be at least 1, got -3"},
		{[]string{"-rows", "many"}, "invalid value"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), tc.args, &stdout, &stderr)
		assert.ErrorContains(t, err, tc.err, "args %q", tc.args)
	}

	var stdout, stderr bytes.Buffer
	assert.NoError(t, run(context.Background(), []string{"-help"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "usage: demo")
}

func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0", 7: "7", 999: "999", 1000: "1,000", 20000: "20,000",
		1_000_000: "1,000,000", -1234: "-1,234",
	} {
		assert.Equal(t, want, group(n), "group(%d)", n)
	}
}

func TestIsTerminal(t *testing.T) {
	assert.False(t, isTerminal(&bytes.Buffer{}))
	f, err := os.CreateTemp(t.TempDir(), "out")
	require.NoError(t, err)
	defer f.Close()
	assert.False(t, isTerminal(f), "a regular file")
}
