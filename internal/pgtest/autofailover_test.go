package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needAutoFailover is needBinaries for pg_auto_failover.
func needAutoFailover(t *testing.T) {
	t.Helper()
	needBinaries(t)
	binDir, err := FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FindAutoctl(binDir); err != nil {
		if inCI() {
			t.Fatal(err, "\n", AutoFailoverInstallHint)
		}
		t.Skip(err, "\n", AutoFailoverInstallHint)
	}
}

func inRecovery(t *testing.T, dsn string) bool {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	var recovering bool
	if err := db.QueryRow("SELECT pg_is_in_recovery()").Scan(&recovering); err != nil {
		t.Fatal(err)
	}
	return recovering
}

// TestFormationFailover: the formation starts with the first node
// primary and the second its standby; killing the primary makes the
// monitor promote the secondary on its own, which the multi-host DSN then
// reaches; Stop leaves no directory and no open port.
func TestFormationFailover(t *testing.T) {
	needAutoFailover(t)
	f, err := StartFormation(FormationOptions{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Stop() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ports := f.Ports()
	primary, err := f.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if primary != ports[0] {
		t.Fatalf("primary on port %d, want the first node's %d", primary, ports[0])
	}
	if inRecovery(t, f.NodeDSN(ports[0])) || !inRecovery(t, f.NodeDSN(ports[1])) {
		t.Fatal("the first node should be the primary and the second its standby")
	}
	selectOne(t, f.DSN())

	killed, err := f.KillPrimary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if killed != ports[0] {
		t.Fatalf("KillPrimary killed port %d, want %d", killed, ports[0])
	}
	assertPortClosed(t, ports[0])
	begin := time.Now()
	for {
		if p, err := f.Primary(ctx); err == nil && p == ports[1] && !inRecovery(t, f.NodeDSN(ports[1])) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the monitor did not promote the secondary")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("promoted %v after the kill", time.Since(begin).Round(time.Millisecond))
	selectOne(t, f.DSN())

	dir := f.dir
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("formation directory after Stop: %v", err)
	}
	assertPortClosed(t, f.monitorPort)
	assertPortClosed(t, ports[1])
	if err := f.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestFormationWatchdogAfterKill: no monitor, node or pg_autoctl outlives
// a test process killed without Stop.
func TestFormationWatchdogAfterKill(t *testing.T) {
	needAutoFailover(t)
	cmd, dir, ports := runHelper(t, "formation")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitGone(t, dir, ports)
}

// TestWaitPortClosed: KillPrimary's wait returns once a port refuses
// connections and fails, naming the port, while something still listens.
func TestWaitPortClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	err = waitPortClosed(port, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("waitPortClosed while listening: %v, want an error naming port %d", err, port)
	}
	time.AfterFunc(200*time.Millisecond, func() { _ = ln.Close() })
	if err := waitPortClosed(port, 30*time.Second); err != nil {
		t.Fatalf("waitPortClosed after the listener closed: %v", err)
	}
}
