package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/lib/pq"
)

// openDB opens dsn through lib/pq, closed with the test.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// count returns how many rows pgtest_standby holds on db.
func count(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM pgtest_standby").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestStandby(t *testing.T) {
	needBinaries(t)
	tmp := isolatedTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	begin := time.Now()
	primary, err := Start(Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = primary.Stop() }() // for a failure midway; the test stops it itself
	t.Logf("Start took %v", time.Since(begin))
	begin = time.Now()
	standby, err := primary.StartStandby(StandbyOptions{Logf: t.Logf, Settings: map[string]string{"max_standby_streaming_delay": "1234ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StartStandby took %v", time.Since(begin))
	if standby.Port() == primary.Port() || standby.SocketDir() == primary.SocketDir() {
		t.Fatalf("standby shares the primary's port or socket directory: %d, %s", standby.Port(), standby.SocketDir())
	}

	pdb, sdb := openDB(t, primary.DSN()), openDB(t, standby.DSN())
	var delay string
	if err := sdb.QueryRow("SHOW max_standby_streaming_delay").Scan(&delay); err != nil || delay != "1234ms" {
		t.Errorf("max_standby_streaming_delay on the standby = %q, %v; want the one of StandbyOptions", delay, err)
	}
	if _, err := pdb.Exec("CREATE TABLE pgtest_standby (n int); INSERT INTO pgtest_standby SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	if err := standby.WaitReplay(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, sdb); n != 1000 {
		t.Errorf("standby has %d rows after WaitReplay, want 1000", n)
	}
	if lag, err := standby.ReplayLag(ctx); err != nil || lag < 0 {
		t.Errorf("ReplayLag = %d, %v", lag, err)
	}
	var pe *pq.Error
	if _, err := sdb.Exec("INSERT INTO pgtest_standby VALUES (0)"); !errors.As(err, &pe) || pe.Code != "25006" {
		t.Errorf("a write on the standby: %v; want read_only_sql_transaction", err)
	}
	// Every connection form works on the standby too.
	cert, key := standby.ClientCert()
	selectOne(t, standby.DSNAs("user="+CertUser+" sslmode=verify-full sslrootcert="+standby.CAFile()+" sslcert="+cert+" sslkey="+key))
	selectOne(t, standby.DSNAs("user="+SCRAMUser+" password="+standby.SCRAMPassword()+" sslmode=disable"))
	if err := primary.WaitReplay(ctx); !errors.Is(err, ErrNotStandby) {
		t.Errorf("WaitReplay on the primary: %v; want ErrNotStandby", err)
	}

	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec("INSERT INTO pgtest_standby VALUES (0)"); err != nil {
		t.Fatalf("a write on the promoted standby: %v", err)
	}
	if n := count(t, sdb); n != 1001 {
		t.Errorf("promoted standby has %d rows, want 1001", n)
	}
	if err := standby.WaitReplay(ctx); !errors.Is(err, ErrNotStandby) {
		t.Errorf("WaitReplay after Promote: %v; want ErrNotStandby", err)
	}

	// The primary's Stop takes its standby along.
	_ = pdb.Close()
	_ = sdb.Close()
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Server{primary, standby} {
		if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("server directory after Stop: %v", err)
		}
		assertPortClosed(t, s.Port())
	}
	assertEmpty(t, tmp)
}

// TestStandbyWatchdogAfterKill: a standby outlives no test process.
func TestStandbyWatchdogAfterKill(t *testing.T) {
	needBinaries(t)
	cmd, dir, ports := runHelper(t, "standby")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitGone(t, dir, ports)
}

func TestStartStandbyWithoutPgBasebackup(t *testing.T) {
	primary := &Server{binDir: t.TempDir()}
	if _, err := primary.StartStandby(StandbyOptions{}); !errors.Is(err, ErrNoServer) {
		t.Fatalf("StartStandby without pg_basebackup: %v; want ErrNoServer", err)
	}
}
