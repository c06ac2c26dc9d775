package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// backendCPU reads the CPU time one server backend has used so far, from
// the first field of /proc/<pid>/schedstat (nanoseconds on the CPU). It
// works only when the server runs on this machine, as the throwaway one
// does: the clients differ in what they ask of the server (batches,
// suspended portals, cursors) as well as in their own CPU, and the
// server's share is measured here rather than guessed from wall time.
type backendCPU struct{ path string }

// backendCPUOf returns the reader of backend pid's CPU time, or false
// when /proc does not show a PostgreSQL process of that pid: a server on
// another machine (whose pid may name an unrelated local process), a
// system without /proc, or one that hides other processes.
func backendCPUOf(pid int) (backendCPU, bool) {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
		return backendCPU{}, false
	}
	c := backendCPU{path: fmt.Sprintf("/proc/%d/schedstat", pid)}
	if _, ok := c.read(); !ok {
		return backendCPU{}, false
	}
	return c, true
}

// read returns the backend's CPU time so far.
func (c backendCPU) read() (time.Duration, bool) {
	data, err := os.ReadFile(c.path)
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, false
	}
	ns, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(ns), true
}

// pinnedConn is a Conn on one connection of a database/sql pool, so that
// every query of the benchmark runs in the one server backend whose CPU
// time is read.
type pinnedConn struct{ conn *sql.Conn }

// Stream implements Conn.
func (c pinnedConn) Stream(ctx context.Context, query string, fn func([]byte) bool) error {
	return streamSQL(ctx, c.conn, query, fn)
}

// SelectOne implements Conn.
func (c pinnedConn) SelectOne(ctx context.Context) error {
	var one int
	return c.conn.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

// Close implements Conn: the connection goes back to its pool.
func (c pinnedConn) Close() error { return c.conn.Close() }

// pinBackend returns a Conn that runs every query on one server backend,
// with the reader of that backend's CPU time, or conn itself and false
// when the backend's pid is unknown or its CPU time cannot be read.
// release returns what was taken from conn's pool. A database/sql client
// asks for pg_backend_pid() on the sql.Conn it then streams on; pgx
// native knows the pid of its connection.
func pinBackend(b *testing.B, conn Conn) (pinned Conn, cpu backendCPU, ok bool, release func()) {
	b.Helper()
	ctx := context.Background()
	switch c := conn.(type) {
	case SQLConn:
		sc, err := c.DB.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var pid int
		if err := sc.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			_ = sc.Close()
			b.Fatal(err)
		}
		if cpu, ok := backendCPUOf(pid); ok {
			p := pinnedConn{sc}
			return p, cpu, true, func() { _ = p.Close() }
		}
		_ = sc.Close()
	case pgxConn:
		if cpu, ok := backendCPUOf(int(c.conn.PgConn().PID())); ok {
			return conn, cpu, true, func() {}
		}
	}
	return conn, backendCPU{}, false, func() {}
}
