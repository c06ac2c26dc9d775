package pgtest

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// EnvDSN names the environment variable that points the integration tests
// at an existing server instead of a throwaway one.
const EnvDSN = "JSONSTREAM_TEST_DSN"

// leakCheckTimeout bounds the wait for goroutines that are still winding
// down (connection closers and the like) before they count as leaked.
const leakCheckTimeout = 2 * time.Second

// shared is the package-wide server behind DSN and Shared.
var shared struct {
	// mu guards the fields below; it is held while the server starts so
	// that concurrent first callers wait for a single start.
	mu        sync.Mutex
	inMain    bool // Main is running, so someone will stop the server
	tried     bool // a start was attempted; err or srv holds the outcome
	srv       *Server
	err       error
	stopWatch func() // ends srv's signal watcher

	// The shared PgBouncer in front of srv, started on first use.
	triedBouncer bool
	bouncer      *PgBouncer
	bouncerErr   error
}

// Main runs the tests of a package that uses the shared server:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// After the tests it stops the shared server, if one was started, and when
// they passed it fails the run if goroutines leaked.
func Main(m *testing.M) (code int) {
	before := goleak.IgnoreCurrent()
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()

	// A panic on this goroutine (in m.Run itself) still stops the server.
	// A panic in a test goroutine kills the process without running this;
	// the server's watchdog cleans up in that case.
	defer func() {
		if r := recover(); r != nil {
			_ = stopShared() // the panic is what matters
			panic(r)
		}
	}()
	code = m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code != 0 {
		// The failure is reported already, and failed tests often leave
		// goroutines behind; a leak report would only bury it.
		return code
	}
	if err := findLeaks(before); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: goroutines leaked by the tests: %v\n", err)
		return 1
	}
	return code
}

// findLeaks retries for a while: goroutines of closed connections may
// still be on their way out.
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(leakCheckTimeout)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

func stopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.inMain = false
	if shared.stopWatch != nil {
		shared.stopWatch()
		shared.stopWatch = nil
	}
	var bouncerErr error
	if shared.bouncer != nil {
		bouncerErr = shared.bouncer.Stop()
		shared.bouncer = nil
	}
	if shared.srv == nil {
		return bouncerErr
	}
	err := errors.Join(bouncerErr, shared.srv.Stop())
	shared.srv = nil
	return err
}

// DSN returns the DSN for the integration tests: $JSONSTREAM_TEST_DSN when
// set, else that of a throwaway server started on the first call and shared
// by the package's tests (which must use Main). Without server binaries it
// skips the test, or fails it under CI, where skipping would hide that
// nothing was tested.
func DSN(t testing.TB) string {
	t.Helper()
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return dsn
	}
	return sharedServer(t).DSN()
}

// Shared returns the throwaway server behind DSN, for tests that need to
// control it, such as with Restart. They must not Stop it: other tests of
// the package share it. When
// JSONSTREAM_TEST_DSN is set the test is skipped, as an external server
// cannot be restarted; under CI the throwaway server is used regardless,
// so these tests always run there.
func Shared(t testing.TB) *Server {
	t.Helper()
	if os.Getenv(EnvDSN) != "" && !inCI() {
		t.Skipf("pgtest: this test needs a throwaway server it can restart; %s points at an external one", EnvDSN)
	}
	return sharedServer(t)
}

func sharedServer(t testing.TB) *Server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("pgtest: the shared server needs TestMain to call pgtest.Main, which stops it")
	}
	if !shared.tried {
		// One attempt only: a server that failed to start once would fail
		// again, slowly, for every test.
		shared.tried = true
		shared.srv, shared.err = Start(Options{Logf: quietLogf})
		if shared.err == nil {
			shared.stopWatch = shared.srv.StopOnSignal()
		}
	}
	if shared.err != nil {
		switch {
		case errors.Is(shared.err, ErrNoServer) && inCI():
			t.Fatal(InstallHint)
		case errors.Is(shared.err, ErrNoServer):
			t.Skip(InstallHint)
		default:
			t.Fatal(shared.err)
		}
	}
	return shared.srv
}

// SharedPgBouncer returns a PgBouncer in front of the shared server,
// started on the first call and stopped by Main. Like Shared, it skips
// the test when JSONSTREAM_TEST_DSN is set (outside CI); without the
// pgbouncer binary it skips the test with PgBouncerInstallHint, or fails
// it under CI.
func SharedPgBouncer(t testing.TB) *PgBouncer {
	t.Helper()
	srv := Shared(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.triedBouncer {
		shared.triedBouncer = true
		shared.bouncer, shared.bouncerErr = StartPgBouncer(srv, quietLogf)
	}
	if shared.bouncerErr != nil {
		switch {
		case errors.Is(shared.bouncerErr, ErrNoPgBouncer) && inCI():
			t.Fatal(shared.bouncerErr, "\n", PgBouncerInstallHint)
		case errors.Is(shared.bouncerErr, ErrNoPgBouncer):
			t.Skip(shared.bouncerErr, "\n", PgBouncerInstallHint)
		default:
			t.Fatal(shared.bouncerErr)
		}
	}
	return shared.bouncer
}

// StandbyPair starts a primary and a hot standby of it (StartStandby with
// opts) for t, both stopped when t ends. A pair of t's own rather than a
// standby of the shared server, so that what the standby replays, and
// the recovery conflicts a test provokes, come from t alone. Like Shared,
// it skips the test when JSONSTREAM_TEST_DSN is set, and without server
// binaries unless under CI, where it fails.
func StandbyPair(t testing.TB, opts StandbyOptions) (primary, standby *Server) {
	t.Helper()
	if os.Getenv(EnvDSN) != "" && !inCI() {
		t.Skipf("pgtest: this test needs a throwaway primary and standby; %s points at an external server", EnvDSN)
	}
	fail := func(err error) {
		t.Helper()
		switch {
		case errors.Is(err, ErrNoServer) && inCI():
			t.Fatal(err, "\n", InstallHint)
		case errors.Is(err, ErrNoServer):
			t.Skip(err, "\n", InstallHint)
		default:
			t.Fatal(err)
		}
	}
	primary, err := Start(Options{Logf: quietLogf})
	if err != nil {
		fail(err)
	}
	// Stops the standby too.
	t.Cleanup(func() {
		if err := primary.Stop(); err != nil {
			t.Error(err)
		}
	})
	if opts.Logf == nil {
		opts.Logf = quietLogf
	}
	standby, err = primary.StartStandby(opts)
	if err != nil {
		fail(err)
	}
	return primary, standby
}

// AutoFailover starts a pg_auto_failover formation (StartFormation) for
// t, stopped when t ends. Like StandbyPair, it skips the test when
// JSONSTREAM_TEST_DSN is set, and without server binaries or
// pg_auto_failover unless under CI, where it fails.
func AutoFailover(t testing.TB) *Formation {
	t.Helper()
	if os.Getenv(EnvDSN) != "" && !inCI() {
		t.Skipf("pgtest: this test needs a throwaway pg_auto_failover formation; %s points at an external server", EnvDSN)
	}
	f, err := StartFormation(FormationOptions{Logf: quietLogf})
	if err != nil {
		missing := errors.Is(err, ErrNoServer) || errors.Is(err, ErrNoAutoFailover)
		switch {
		case missing && inCI():
			t.Fatal(err, "\n", AutoFailoverInstallHint)
		case missing:
			t.Skip(err, "\n", AutoFailoverInstallHint)
		default:
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if err := f.Stop(); err != nil {
			t.Error(err)
		}
	})
	return f
}

// quietLogf keeps progress out of test output unless tests run verbose.
func quietLogf(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

// inCI reports whether we run in CI, where missing prerequisites must fail.
func inCI() bool {
	v := strings.TrimSpace(os.Getenv("CI"))
	return v == "1" || strings.EqualFold(v, "true")
}
