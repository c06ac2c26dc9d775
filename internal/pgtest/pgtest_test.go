package pgtest

import (
	"bufio"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// needBinaries mirrors DSN's policy: without a server a test is skipped,
// except in CI.
func needBinaries(t *testing.T) {
	t.Helper()
	if _, err := FindBinDir(); err != nil {
		if inCI() {
			t.Fatal(err, "\n", InstallHint)
		}
		t.Skip(err, "\n", InstallHint)
	}
}

// isolatedTempDir points TMPDIR at a directory of this test's own, so it
// can check that nothing is left behind while other packages' tests create
// servers concurrently. It must stay reachable by the unprivileged user
// the server runs as under root.
func isolatedTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("TMPDIR", dir)
	return dir
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in the temp dir: %s", e.Name())
	}
}

func selectOne(t *testing.T, dsn string) {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT 1").Scan(&n); err != nil {
		t.Fatalf("SELECT 1: %v", err)
	}
	if n != 1 {
		t.Fatalf("SELECT 1 returned %d", n)
	}
}

func assertPortClosed(t *testing.T, port int) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err == nil {
		_ = conn.Close()
		t.Errorf("port %d still accepts connections", port)
	}
}

func TestStartRestartStop(t *testing.T) {
	needBinaries(t)
	tmp := isolatedTempDir(t)

	begin := time.Now()
	s, err := Start(Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start took %v", time.Since(begin))
	defer func() { _ = s.Stop() }() // for a failure midway; the test stops it itself
	port := s.Port()
	selectOne(t, s.DSN())
	selectOne(t, s.URL())

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Port() != port {
		t.Errorf("port changed across Restart: %d, then %d", port, s.Port())
	}
	selectOne(t, s.DSN())

	dir := s.dir
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server directory after Stop: %v", err)
	}
	assertPortClosed(t, port)
	assertEmpty(t, tmp)

	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := s.Restart(); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

func TestStartFailureCleansUp(t *testing.T) {
	needBinaries(t)
	tmp := isolatedTempDir(t)

	// Beyond PostgreSQL's limit, so the postmaster exits at once.
	s, err := Start(Options{MaxConnections: 1 << 20})
	if err == nil {
		_ = s.Stop()
		t.Fatal("Start succeeded with an impossible max_connections")
	}
	if !strings.Contains(err.Error(), "max_connections") {
		t.Errorf("error lacks the server's explanation: %v", err)
	}
	assertEmpty(t, tmp)
}

func TestStartAsRootNeedsReachableTempDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the server to another user")
	}
	needBinaries(t)
	tmp := t.TempDir() // 0700 and root's: closed to the server's user
	t.Setenv("TMPDIR", tmp)

	s, err := Start(Options{})
	if err == nil {
		_ = s.Stop()
		t.Fatal("Start succeeded in a temp dir the server cannot reach")
	}
	if !strings.Contains(err.Error(), "TMPDIR") {
		t.Errorf("error does not say what to do: %v", err)
	}
	assertEmpty(t, tmp)
}

func TestSharedServer(t *testing.T) {
	if os.Getenv(EnvDSN) != "" {
		t.Skipf("%s is set", EnvDSN)
	}
	dsn := DSN(t)
	selectOne(t, dsn)
	if got := Shared(t).DSN(); got != dsn {
		t.Errorf("Shared(t).DSN() = %q, DSN(t) = %q", got, dsn)
	}
}

func TestDSNForms(t *testing.T) {
	s := &Server{port: 54321}
	if got, want := s.DSN(), "host=127.0.0.1 port=54321 user=postgres dbname=postgres sslmode=disable"; got != want {
		t.Errorf("DSN() = %q, want %q", got, want)
	}
	if got, want := s.URL(), "postgres://postgres@127.0.0.1:54321/postgres?sslmode=disable"; got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
}

func withSearchGlobs(t *testing.T, globs ...string) {
	old := searchGlobs
	searchGlobs = globs
	t.Cleanup(func() { searchGlobs = old })
}

func TestFindBinDirNothing(t *testing.T) {
	t.Setenv("PATH", "")
	withSearchGlobs(t, filepath.Join(t.TempDir(), "*", "bin"))

	dir, err := FindBinDir()
	if !errors.Is(err, ErrNoServer) {
		t.Fatalf("FindBinDir() = %q, %v; want ErrNoServer", dir, err)
	}
}

func TestFindBinDirNewestComplete(t *testing.T) {
	root := t.TempDir()
	install := func(version string, names ...string) string {
		bin := filepath.Join(root, version, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(bin, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return bin
	}
	install("9.6", serverBinaries...)
	want := install("15", serverBinaries...)
	install("10", serverBinaries...)
	install("17", "initdb", "pg_ctl") // client-only leftovers: no postgres
	t.Setenv("PATH", "")
	withSearchGlobs(t, filepath.Join(root, "*", "bin"))

	got, err := FindBinDir()
	if err != nil || got != want {
		t.Fatalf("FindBinDir() = %q, %v; want %q", got, err, want)
	}
}

// helperEnv selects the role of a re-executed test binary; see
// TestHelperProcess.
const helperEnv = "PGTEST_HELPER_MODE"

// TestHelperProcess is not a test: the tests below re-execute the test
// binary to run it as a server owner they can interrupt or kill.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for other tests")
	}
	if mode == "formation" {
		f, err := StartFormation(FormationOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fmt.Printf("READY %s %d %d %d\n", f.dir, f.monitorPort, f.nodePorts[0], f.nodePorts[1])
		time.Sleep(time.Minute) // until the parent ends us
		t.Fatal("not ended by the parent")
	}
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if mode == "signal" {
		defer s.StopOnSignal()()
	}
	if mode == "standby" {
		st, err := s.StartStandby(StandbyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = os.Stdout.WriteString("READY " + st.dir + " " + strconv.Itoa(st.Port()) + "\n")
		time.Sleep(time.Minute) // until the parent ends us
		t.Fatal("not ended by the parent")
	}
	if mode == "pgbouncer" {
		b, err := StartPgBouncer(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = os.Stdout.WriteString("READY " + b.dir + " " + strconv.Itoa(b.Port()) + "\n")
		time.Sleep(time.Minute) // until the parent ends us
		t.Fatal("not ended by the parent")
	}
	_, _ = os.Stdout.WriteString("READY " + s.dir + " " + strconv.Itoa(s.Port()) + "\n")
	time.Sleep(time.Minute) // until the parent ends us
	t.Fatal("not ended by the parent")
}

// runHelper starts a server in a child process and returns it with the
// server's directory and port(s).
func runHelper(t *testing.T, mode string) (*exec.Cmd, string, []int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 3 || f[0] != "READY" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper did not start a server: %q, %v", line, err)
	}
	var ports []int
	for _, p := range f[2:] {
		port, _ := strconv.Atoi(p)
		ports = append(ports, port)
	}
	return cmd, f[1], ports
}

// waitGone polls because cleanup after a hard kill happens in another
// process, on its own schedule.
func waitGone(t *testing.T, dir string, ports []int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := os.Stat(dir)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server directory still there: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, port := range ports {
		assertPortClosed(t, port)
	}
}

func TestStopOnSignal(t *testing.T) {
	needBinaries(t)
	cmd, dir, ports := runHelper(t, "signal")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("helper: %v", err)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && (!ws.Signaled() || ws.Signal() != syscall.SIGTERM) {
		t.Errorf("helper did not die of SIGTERM: %v", err)
	}
	// StopOnSignal finished before the process died: no waiting needed.
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server directory after SIGTERM: %v", err)
	}
	assertPortClosed(t, ports[0])
}

// TestPgBouncerWatchdogAfterKill: a pgbouncer outlives no test process.
func TestPgBouncerWatchdogAfterKill(t *testing.T) {
	needBinaries(t)
	if _, err := FindPgBouncer(); err != nil {
		if inCI() {
			t.Fatal(err, "\n", PgBouncerInstallHint)
		}
		t.Skip(err, "\n", PgBouncerInstallHint)
	}
	cmd, dir, ports := runHelper(t, "pgbouncer")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitGone(t, dir, ports)
}

func TestWatchdogAfterKill(t *testing.T) {
	needBinaries(t)
	cmd, dir, ports := runHelper(t, "kill")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: it can only say so
	waitGone(t, dir, ports)
}

func TestSecureTopologies(t *testing.T) {
	s := Shared(t)
	cert, key := s.ClientCert()
	for name, dsn := range map[string]string{
		"require":     s.DSNAs("user=postgres sslmode=require"),
		"verify-full": "host=localhost port=" + strconv.Itoa(s.Port()) + " dbname=postgres user=postgres sslmode=verify-full sslrootcert=" + s.CAFile(),
		"client cert": s.DSNAs("user=" + CertUser + " sslmode=verify-full sslrootcert=" + s.CAFile() + " sslcert=" + cert + " sslkey=" + key),
		"unix socket": "host=" + s.SocketDir() + " port=" + strconv.Itoa(s.Port()) + " user=postgres dbname=postgres",
		"scram":       s.DSNAs("user=" + SCRAMUser + " password=" + s.SCRAMPassword() + " sslmode=disable"),
		"scram unix":  "host=" + s.SocketDir() + " port=" + strconv.Itoa(s.Port()) + " dbname=postgres user=" + SCRAMUser + " password=" + s.SCRAMPassword(),
	} {
		t.Run(name, func(t *testing.T) { selectOne(t, dsn) })
	}
	t.Run("scram refuses a wrong password", func(t *testing.T) {
		db, err := sql.Open("postgres", s.DSNAs("user="+SCRAMUser+" password=wrong sslmode=disable"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Ping(); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("Ping with a wrong password: %v", err)
		}
	})
	t.Run("cert user needs its certificate", func(t *testing.T) {
		db, err := sql.Open("postgres", s.DSNAs("user="+CertUser+" sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Ping(); err == nil {
			t.Fatal("cert user logged in without a certificate")
		}
	})
	t.Run("ssl is on", func(t *testing.T) {
		db, err := sql.Open("postgres", s.DSNAs("user=postgres sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var ssl bool
		if err := db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("connection not encrypted: %v, %v", ssl, err)
		}
	})
}

func TestPgBouncer(t *testing.T) {
	b := SharedPgBouncer(t)
	t.Logf("PgBouncer %s", b.Version())
	for _, db := range []string{SessionPool, TransactionPool} {
		selectOne(t, b.DSN(db))
	}
	admin, err := sql.Open("postgres", b.DSN("pgbouncer")+" binary_parameters=yes")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	rows, err := admin.Query("SHOW POOLS")
	if err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()
}

func TestFindPgBouncerNothing(t *testing.T) {
	t.Setenv("PATH", "")
	old := pgbouncerSearch
	pgbouncerSearch = []string{filepath.Join(t.TempDir(), "pgbouncer")}
	t.Cleanup(func() { pgbouncerSearch = old })
	if p, err := FindPgBouncer(); !errors.Is(err, ErrNoPgBouncer) {
		t.Fatalf("FindPgBouncer() = %q, %v; want ErrNoPgBouncer", p, err)
	}
	if _, err := StartPgBouncer(&Server{}, nil); !errors.Is(err, ErrNoPgBouncer) {
		t.Fatalf("StartPgBouncer without the binary: %v; want ErrNoPgBouncer", err)
	}
}
