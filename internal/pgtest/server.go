// Package pgtest runs a throwaway PostgreSQL server for the integration
// tests, the demo and the benchmarks.
//
// Start creates a private cluster in a temporary directory, tuned for speed
// instead of durability, and Stop removes every trace of it. Main, DSN and
// Shared share one such server between the tests of a package, and
// SharedPgBouncer a PgBouncer in front of it. StartStandby makes a hot
// standby of a server, and StandbyPair a primary and standby of a test's
// own.
package pgtest

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	// Readiness is proven with a real connection through the same driver
	// the code under test wraps.
	_ "github.com/lib/pq"
)

const (
	defaultMaxConnections = 300
	readyTimeout          = 30 * time.Second
	bindAttempts          = 5
	fastStopTimeout       = 15 * time.Second
	immediateStopTimeout  = 5 * time.Second
	logTailBytes          = 4 << 10
)

// Options configures Start. The zero value is ready to use.
type Options struct {
	// Logf receives progress lines (binaries used, timings); nil discards them.
	Logf func(format string, args ...any)
	// MaxConnections is the server's max_connections; 0 means 300, enough
	// for tests that run many connections in parallel.
	MaxConnections int
}

// Server is a running throwaway PostgreSQL cluster. It listens on
// 127.0.0.1 and its Unix socket only, trusts every local connection as user
// postgres, and runs with fsync off: its data is not meant to survive a
// crash. It also serves TLS with certificates made at start (CAFile,
// ClientCert) and has a role for client-certificate authentication
// (CertUser) and one for SCRAM-SHA-256 (SCRAMUser).
type Server struct {
	port    int
	dir     string // private temp dir: data directory, log file, unix socket
	binDir  string
	maxConn int
	owner   *account // nil unless running as root, see runAs
	logf    func(format string, args ...any)
	// scramPassword is SCRAMUser's; see setupSecurity.
	scramPassword string
	// settings are extra "-c name=value" arguments of the postmaster.
	settings []string
	// primary is the server a standby was made from, nil for others.
	primary *Server

	// mu guards the fields below and is held for the whole of Stop and
	// Restart, so the two never interleave.
	mu       sync.Mutex
	stopped  bool
	log      *os.File
	proc     *exec.Cmd     // the postmaster, nil while it is down
	exited   chan struct{} // closed once proc has been reaped
	watchdog *watchdog
	// standbys are those made from this server; Stop stops them first.
	standbys []*Server
}

// account is the unprivileged user the server runs as when we are root.
type account struct {
	name     string
	uid, gid uint32
}

// Start initialises a new cluster in a fresh temporary directory, starts it
// on a free loopback port and waits until it accepts connections. The
// server's time zone is UTC so results do not depend on the machine.
// The caller must call Stop. An error wrapping ErrNoServer means the
// server binaries are not installed (see InstallHint).
func Start(opts Options) (*Server, error) {
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{
		binDir:  binDir,
		maxConn: opts.MaxConnections,
		logf:    opts.Logf,
	}
	if s.maxConn <= 0 {
		s.maxConn = defaultMaxConnections
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		s.owner = lookupNobody()
	}

	begin := time.Now()
	if err := s.setup(); err != nil {
		s.mu.Lock()
		_ = s.teardown()
		s.mu.Unlock()
		return nil, err
	}
	s.logf("pgtest: server ready on port %d in %v (binaries in %s)", s.port, time.Since(begin).Round(time.Millisecond), binDir)
	return s, nil
}

func (s *Server) setup() error {
	if err := s.makeDir(); err != nil {
		return err
	}
	t := time.Now()
	initdb := s.command("initdb", "-D", s.dataDir(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "-N")
	if err := initdb.Run(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, s.logTail(0))
	}
	s.logf("pgtest: initdb took %v", time.Since(t).Round(time.Millisecond))
	if err := s.setupSecurity(); err != nil {
		return err
	}
	if err := s.startOnFreePort(); err != nil {
		return err
	}
	return s.createRoles(s.exec)
}

// makeDir creates the server's private directory with its log file, and
// starts the watchdog that removes both should we die without Stop.
func (s *Server) makeDir() error {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	s.dir = dir
	if s.owner != nil {
		if err := s.handOver(dir); err != nil {
			return err
		}
	}
	s.log, err = os.OpenFile(filepath.Join(dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.owner != nil {
		if err := os.Chown(s.log.Name(), int(s.owner.uid), int(s.owner.gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	s.watchdog = startWatchdog(dir, []string{filepath.Join(s.dataDir(), "postmaster.pid")}, s.logf)
	return nil
}

// startOnFreePort starts the postmaster on a port that is free. A port
// that was free a moment ago may be taken by the time postgres binds it;
// only that failure is worth another try with a new port.
func (s *Server) startOnFreePort() error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
		err = s.startProcess()
		if err == nil || !errors.Is(err, errBind) || attempt == bindAttempts {
			return err
		}
		s.logf("pgtest: port %d was taken, retrying", port)
	}
}

// handOver gives dir to the unprivileged account. 0700 keeps the cluster
// private; the directories above it must let that account pass through.
func (s *Server) handOver(dir string) error {
	if err := os.Chown(dir, int(s.owner.uid), int(s.owner.gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("pgtest: user %s cannot reach %s because %s is not world-searchable; set TMPDIR to a directory such as /tmp", s.owner.name, dir, p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// lookupNobody finds the conventional unprivileged account, falling back
// to the id most systems give it.
func lookupNobody() *account {
	a := &account{name: "nobody", uid: 65534, gid: 65534}
	u, err := user.Lookup("nobody")
	if err != nil {
		return a
	}
	if uid, ok := parseID(u.Uid); ok {
		a.uid = uid
	}
	if gid, ok := parseID(u.Gid); ok {
		a.gid = gid
	}
	return a
}

// parseID accepts the negative ids some systems report (macOS: nobody is -2).
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// command prepares a server binary to run as the cluster's owner, with
// output going to the log file and an environment that cannot redirect it.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.dir // the caller's working directory may be closed to the owner
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = sysProcAttr(s.owner)
	cmd.Env = childEnv()
	return cmd
}

// childEnv drops PG* variables (PGDATA, PGPORT, ... would override our
// choices), fixes the time zone for reproducible results and the locale
// for log messages we can recognise.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "TZ" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "TZ=UTC")
}

var errBind = errors.New("pgtest: could not bind port")

// startProcess starts the postmaster on s.port and waits until it accepts
// connections. Callers hold s.mu or own s exclusively.
func (s *Server) startProcess() error {
	logStart := s.logSize()
	cmd := s.command("postgres",
		"-D", s.dataDir(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(s.port),
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections="+strconv.Itoa(s.maxConn),
		"-c", "shared_buffers=128MB",
		// With synchronous_commit off, the WAL writer is what flushes a
		// commit, and only flushed WAL reaches a standby: every 10ms
		// instead of 200ms keeps WaitReplay quick.
		"-c", "wal_writer_delay=10ms",
	)
	cmd.Args = append(cmd.Args, securitySettings()...)
	// Last, so that a standby's own settings win.
	cmd.Args = append(cmd.Args, s.settings...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	exited := make(chan struct{})
	s.proc, s.exited = cmd, exited
	// Reaper: lets readiness polling and stopProcess notice the exit. It
	// ends when postgres exits, which stopProcess (or the watchdog) ensures.
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	t := time.Now()
	if err := s.waitReady(); err != nil {
		_ = s.stopProcess()
		tail := s.logTail(logStart)
		if strings.Contains(tail, "could not bind") || strings.Contains(tail, "could not create any TCP/IP sockets") {
			return fmt.Errorf("%w %d: %w\n%s", errBind, s.port, err, tail)
		}
		return fmt.Errorf("%w\n%s", err, tail)
	}
	s.logf("pgtest: postgres accepted connections after %v", time.Since(t).Round(time.Millisecond))
	return nil
}

func (s *Server) waitReady() error { return waitReady("postgres", s.DSN(), s.exited) }

// waitReady pings dsn until it answers, the process behind it (name)
// exits (exited is closed), or readyTimeout passes.
func waitReady(name, dsn string, exited <-chan struct{}) error {
	db, err := sql.Open("postgres", dsn+" connect_timeout=2")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("pgtest: %s exited during startup (last connection error: %w)", name, err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: %s did not accept connections within %v: %w", name, readyTimeout, err)
		}
	}
}

// exec runs statements as postgres, for the harness's own setup.
func (s *Server) exec(statements string) error {
	db, err := sql.Open("postgres", s.DSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	if _, err := db.Exec(statements); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// stopProcess shuts the postmaster down: fast shutdown first (disconnects
// clients, no waiting for them), then immediate, then SIGKILL to its whole
// process group. Callers hold s.mu or own s exclusively.
func (s *Server) stopProcess() error {
	if s.proc == nil {
		return nil
	}
	p, exited := s.proc.Process, s.exited
	s.proc, s.exited = nil, nil
	steps := []struct {
		name    string
		signal  func(*os.Process) error
		timeout time.Duration
	}{
		{"fast shutdown", signalFast, fastStopTimeout},
		{"immediate shutdown", signalImmediate, immediateStopTimeout},
		{"kill", killGroup, immediateStopTimeout},
	}
	for _, step := range steps {
		select {
		case <-exited:
			return nil
		default:
		}
		_ = step.signal(p) // fails only if it is already gone, which exited reports
		select {
		case <-exited:
			return nil
		case <-time.After(step.timeout):
			s.logf("pgtest: postgres (pid %d) ignored %s for %v", p.Pid, step.name, step.timeout)
		}
	}
	return fmt.Errorf("pgtest: postgres (pid %d) did not exit even after SIGKILL", p.Pid)
}

// teardown stops everything and removes the directory. Callers hold s.mu
// or own s exclusively.
func (s *Server) teardown() error {
	s.stopped = true
	// Standbys first: they would only keep asking for the primary.
	var err error
	for _, st := range s.standbys {
		err = errors.Join(err, st.Stop())
	}
	s.standbys = nil
	err = errors.Join(err, s.stopProcess())
	if s.log != nil {
		_ = s.log.Close()
		s.log = nil
	}
	if s.dir != "" {
		if rmErr := os.RemoveAll(s.dir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("pgtest: %w", rmErr))
		}
	}
	// Last, so that it finds nothing left to clean up.
	s.watchdog.stop()
	s.watchdog = nil
	return err
}

// DSN returns the key=value connection string for the server.
func (s *Server) DSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", s.port)
}

// URL returns the connection string in URL form.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Port returns the loopback TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Stop shuts the server down and removes its directory, after doing the
// same to the standbys made from it (StartStandby). It is safe to call
// more than once and from several goroutines; later calls return nil.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	return s.teardown()
}

// Crash stops the server at once, as pg_ctl stop -m immediate does: every
// session ends without a clean shutdown, as in a crash or a failover. The
// cluster stays on disk until Stop.
func (s *Server) Crash() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	p, exited := s.proc.Process, s.exited
	s.proc, s.exited = nil, nil
	_ = signalImmediate(p)
	select {
	case <-exited:
		return nil
	case <-time.After(immediateStopTimeout):
	}
	_ = killGroup(p)
	select {
	case <-exited:
		return nil
	case <-time.After(immediateStopTimeout):
		return fmt.Errorf("pgtest: postgres (pid %d) did not exit even after SIGKILL", p.Pid)
	}
}

// Restart stops the server (fast shutdown, so open connections break) and
// starts the same cluster again on the same port. Data survives.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pgtest: Restart of a stopped server")
	}
	if err := s.stopProcess(); err != nil {
		return err
	}
	// The port is normally free again at once, but a client of the old
	// instance may still hold it for a moment.
	var err error
	for attempt := 1; attempt <= bindAttempts; attempt++ {
		if err = s.startProcess(); err == nil || !errors.Is(err, errBind) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// StopOnSignal makes an interrupt or SIGTERM stop the server and remove its
// directory before the process dies of that signal. The watchdog would
// clean up too, but only after the process is gone and with an immediate
// shutdown; this way nothing outlives the process. cancel ends the
// watching; it is idempotent and returns once the watcher has finished.
func (s *Server) StopOnSignal() (cancel func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	quit := make(chan struct{})
	done := make(chan struct{})
	// Signal watcher: guards the server against Ctrl-C/SIGTERM. cancel
	// stops it; a signal ends it by ending the process.
	go func() {
		defer close(done)
		select {
		case sig := <-sigs:
			signal.Stop(sigs)
			if err := s.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			reraise(sig)
		case <-quit:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(quit)
			<-done
		})
	}
}

// reraise delivers sig again now that our handler is gone, so the process
// ends the way it would have without us (exit status included).
func reraise(sig os.Signal) {
	if p, err := os.FindProcess(os.Getpid()); err == nil && p.Signal(sig) == nil {
		time.Sleep(time.Second) // delivery is asynchronous
	}
	// Still alive: the signal cannot be sent on this platform or someone
	// else handles it now. Exit as a shell would report a signal death.
	code := 1
	if n, ok := sig.(syscall.Signal); ok {
		code = 128 + int(n)
	}
	os.Exit(code)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) logSize() int64 {
	if s.log == nil {
		return 0
	}
	fi, err := s.log.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logTail returns the end of what was logged after offset from, for error
// messages: the server's own explanation is usually the useful part.
func (s *Server) logTail(from int64) string {
	f, err := os.Open(filepath.Join(s.dir, "postgres.log"))
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }() // read only
	if fi, err := f.Stat(); err == nil && fi.Size()-from > logTailBytes {
		from = fi.Size() - logTailBytes
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(server log is empty)"
	}
	return "server log:\n" + string(b)
}
