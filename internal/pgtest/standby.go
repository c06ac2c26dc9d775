package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// StandbyOptions configures StartStandby. The zero value is ready to use.
type StandbyOptions struct {
	// Logf receives progress lines; nil means the primary's.
	Logf func(format string, args ...any)
	// Settings are postgresql.conf settings of the standby by name, such
	// as max_standby_streaming_delay or hot_standby_feedback. They come
	// after pgtest's own, so they win, and they last across Restart.
	Settings map[string]string
}

// replayPoll is how often WaitReplay asks the standby how far it got.
const replayPoll = 5 * time.Millisecond

// promoteWaitSeconds bounds Promote's wait for the end of recovery.
const promoteWaitSeconds = 60

// ErrNotStandby is the error of WaitReplay and ReplayLag on a server that
// is not in recovery: it never was a standby, or it was promoted.
var ErrNotStandby = errors.New("pgtest: the server is not a standby")

// StartStandby makes a hot standby of s: a base backup taken with
// pg_basebackup -R as the account s runs as, started in a directory and
// on a port of its own, streaming from s over its Unix socket. It returns
// once the standby accepts connections. The standby is a Server like s,
// with the same roles and certificates; Stop of s stops it too. An error
// wrapping ErrNoServer means pg_basebackup is missing beside s's binaries.
func (s *Server) StartStandby(opts StandbyOptions) (*Server, error) {
	if !isExecutable(filepath.Join(s.binDir, "pg_basebackup")) {
		return nil, fmt.Errorf("%w: pg_basebackup is not in %s; Debian's postgresql-client-<version> has it", ErrNoServer, s.binDir)
	}
	st := &Server{
		binDir:        s.binDir,
		maxConn:       s.maxConn, // a hot standby refuses fewer than its primary's
		owner:         s.owner,
		logf:          opts.Logf,
		scramPassword: s.scramPassword, // the roles come with the backup
		primary:       s,
	}
	if st.logf == nil {
		st.logf = s.logf
	}
	// Sorted, so that the command line is the same from run to run.
	for _, name := range slices.Sorted(maps.Keys(opts.Settings)) {
		st.settings = append(st.settings, "-c", name+"="+opts.Settings[name])
	}

	begin := time.Now()
	err := st.setupStandby(s)
	if err == nil {
		s.mu.Lock()
		if s.stopped {
			err = errors.New("pgtest: the primary was stopped while its standby started")
		} else {
			s.standbys = append(s.standbys, st)
		}
		s.mu.Unlock()
	}
	if err != nil {
		st.mu.Lock()
		_ = st.teardown()
		st.mu.Unlock()
		return nil, err
	}
	st.logf("pgtest: standby of port %d ready on port %d in %v", s.port, st.port, time.Since(begin).Round(time.Millisecond))
	return st, nil
}

// setupStandby takes the base backup of primary into s and starts s.
func (s *Server) setupStandby(primary *Server) error {
	if err := s.makeDir(); err != nil {
		return err
	}
	t := time.Now()
	// A fast checkpoint, as the default spread one takes minutes; no
	// sync, as the copy is as throwaway as its source.
	backup := s.command("pg_basebackup", "-D", s.dataDir(),
		"-h", primary.dir, "-p", strconv.Itoa(primary.port), "-U", "postgres", "-w",
		"-X", "stream", "--checkpoint=fast", "--no-sync", "-R")
	if err := backup.Run(); err != nil {
		return fmt.Errorf("pgtest: pg_basebackup: %w\n%s", err, s.logTail(0))
	}
	s.logf("pgtest: pg_basebackup took %v", time.Since(t).Round(time.Millisecond))
	if err := copyClientFiles(primary.dir, s.dir); err != nil {
		return err
	}
	return s.startOnFreePort()
}

// copyClientFiles gives the standby the client's certificate files of its
// primary, whose CA signed the server certificate the backup carries.
func copyClientFiles(from, to string) error {
	if err := os.Mkdir(filepath.Join(to, clientDir), 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	for _, name := range []string{caCertFile, clientCertFile, clientKeyFile} {
		b, err := os.ReadFile(filepath.Join(from, clientDir, name))
		if err == nil {
			err = os.WriteFile(filepath.Join(to, clientDir, name), b, 0o600)
		}
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// Promote ends recovery on the standby s and returns once it accepts
// writes. It stays a standby of its former primary only in that the
// primary's Stop still stops it.
func (s *Server) Promote(ctx context.Context) error {
	db, err := sql.Open("postgres", s.DSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	var done bool
	if err := db.QueryRowContext(ctx, "SELECT pg_promote(true, $1)", promoteWaitSeconds).Scan(&done); err != nil {
		return fmt.Errorf("pgtest: promote: %w", err)
	}
	if !done {
		return fmt.Errorf("pgtest: promote: still in recovery after %ds\n%s", promoteWaitSeconds, s.logTail(0))
	}
	return nil
}

// WaitReplay waits until the standby s has replayed all the WAL its
// primary had inserted when WaitReplay was called, so that what was
// committed there before is visible on s. It fails when ctx ends first,
// saying how far s got, or when s is not in recovery (promoted).
// The WAL of a transaction still open on the primary counts too, and
// reaches s once the primary flushes it, at the latest with its next
// commit.
func (s *Server) WaitReplay(ctx context.Context) error {
	target, err := s.primaryLSN(ctx)
	if err != nil {
		return err
	}
	db, err := sql.Open("postgres", s.DSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	for {
		var inRecovery bool
		var replayed sql.NullString
		var reached sql.NullBool
		err := db.QueryRowContext(ctx, `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
			pg_last_wal_replay_lsn() >= $1::pg_lsn`, target).Scan(&inRecovery, &replayed, &reached)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("pgtest: standby replayed up to %s of %s: %w", replayed.String, target, ctx.Err())
		case err != nil:
			return fmt.Errorf("pgtest: replay position: %w", err)
		case !inRecovery:
			return ErrNotStandby
		case reached.Bool:
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(replayPoll):
		}
	}
}

// ReplayLag returns how many bytes of WAL the primary of the standby s
// had inserted that s had not replayed yet; 0 once s has caught up.
func (s *Server) ReplayLag(ctx context.Context) (int64, error) {
	target, err := s.primaryLSN(ctx)
	if err != nil {
		return 0, err
	}
	db, err := sql.Open("postgres", s.DSN())
	if err != nil {
		return 0, fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	var inRecovery bool
	var lag sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT pg_is_in_recovery(),
		pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::bigint`, target).Scan(&inRecovery, &lag); err != nil {
		return 0, fmt.Errorf("pgtest: replay lag: %w", err)
	}
	if !inRecovery || !lag.Valid {
		return 0, ErrNotStandby
	}
	// s may have replayed WAL inserted after the primary was asked.
	return max(lag.Int64, 0), nil
}

// primaryLSN returns the WAL insert position of the primary of s. The
// insert position rather than pg_current_wal_lsn's write position: with
// synchronous_commit off, a commit that has returned may not be written
// yet; the WAL writer flushes it within wal_writer_delay.
func (s *Server) primaryLSN(ctx context.Context) (string, error) {
	if s.primary == nil {
		return "", ErrNotStandby
	}
	db, err := sql.Open("postgres", s.primary.DSN())
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	var lsn string
	if err := db.QueryRowContext(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
		return "", fmt.Errorf("pgtest: primary's WAL position: %w", err)
	}
	return lsn, nil
}
