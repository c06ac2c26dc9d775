// Command demo shows jsonstream at work on a table of JSON documents: it
// streams them into Go values with a live progress line, pauses the
// stream and shows that the server waits for it, lets a pause timeout
// fire, and closes a result early in cursor mode, in the single-statement
// mode and with plain lib/pq: how long Close takes, and whether the
// connection survives it.
//
//	go run ./cmd/demo                  a throwaway PostgreSQL, 1,000,000 documents
//	go run ./cmd/demo -rows 50000      fewer documents
//	go run ./cmd/demo -dsn 'host=...'  an existing server (or set DATABASE_URL)
//
// On an existing server it creates one table (and its view) named after
// the process and drops them at the end, on Ctrl-C too.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jsonstream/jsonstream/internal/pgtest"
	"github.com/lib/pq"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Once the first signal has started the cleanup, a second one should
	// kill the process as usual rather than be swallowed; the server's
	// watchdog then removes what the cleanup did not get to.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// envDSN names the environment variable that points the demo at an
// existing server, as in most tools that talk to PostgreSQL.
const envDSN = "DATABASE_URL"

// findBinDir is pgtest.FindBinDir; tests replace it to play a machine
// without PostgreSQL.
var findBinDir = pgtest.FindBinDir

// errInterrupted is what run returns when its context ends: the cause is
// the user's Ctrl-C, not a failure worth a message of its own.
var errInterrupted = errors.New("interrupted; everything the demo created was removed")

type config struct {
	dsn  string
	rows int
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	// Silent while parsing: a bad flag is reported once, by main, and the
	// usage is printed only when asked for.
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.dsn, "dsn", "", "DSN of an existing PostgreSQL server (default $"+envDSN+", else a throwaway server)")
	fs.IntVar(&c.rows, "rows", 1_000_000, "number of JSON documents to load and stream")
	usage := func() {
		fs.SetOutput(stderr)
		_, _ = fmt.Fprintf(stderr, "usage: demo [-rows N] [-dsn DSN]\n\n"+
			"Loads N JSON documents into PostgreSQL and shows jsonstream streaming,\n"+
			"pausing and closing them. Without -dsn or $%s it runs its own\n"+
			"throwaway server and removes it afterwards.\n\n", envDSN)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		usage()
		return c, err
	} else if err != nil {
		return c, fmt.Errorf("%w (see -help)", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q (see -help)", fs.Arg(0))
	}
	if c.rows < 1 {
		return c, fmt.Errorf("-rows must be at least 1, got %d", c.rows)
	}
	if c.dsn == "" {
		c.dsn = os.Getenv(envDSN)
	}
	return c, nil
}

// run is the whole demo; main only adds the signals and the exit status.
// Progress goes to stderr, the steps and the summary to stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	out := newPrinter(stdout, stderr)
	// Every error from here on may really be the context ending, seen
	// through a driver or the database; say so plainly instead.
	defer func() {
		if err != nil && ctx.Err() != nil {
			out.endLine()
			err = errInterrupted
		}
	}()

	dsn := cfg.dsn
	if dsn == "" {
		srv, err := startServer(out)
		if err != nil {
			return err
		}
		defer func() {
			out.say("Stopping the throwaway server and removing its directory.")
			if stopErr := srv.Stop(); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
		}()
		dsn = srv.DSN()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	observed := &tally{}
	db, err := openObserved(dsn, observed)
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}

	d := &demo{
		out:   out,
		db:    db,
		dsn:   dsn,
		table: demoTable(),
		rows:  cfg.rows,
		seen:  observed,
	}
	defer func() {
		if dropErr := d.dropTable(ctx); dropErr != nil {
			err = errors.Join(err, dropErr)
		}
	}()
	steps := []func(context.Context) error{d.load, d.stream, d.pauseTimeout, d.earlyClose}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	d.summary()
	return nil
}

// demoTable is named after the process so that demos (and tests) sharing
// a server do not trip over one another's tables.
func demoTable() string { return fmt.Sprintf("jsonstream_demo_%d", os.Getpid()) }

// startServer starts a throwaway PostgreSQL, or explains how to get one.
func startServer(out *printer) (*pgtest.Server, error) {
	if _, err := findBinDir(); err != nil {
		if errors.Is(err, pgtest.ErrNoServer) {
			_, _ = fmt.Fprint(out.stderr, noServerMessage())
			return nil, errors.New("no PostgreSQL to run against")
		}
		return nil, err
	}
	out.say("Starting a throwaway PostgreSQL server (initdb into a temporary directory)...")
	begin := time.Now()
	// Start does not watch a context: a Ctrl-C during it takes effect once
	// it returns, which is within its own startup bound.
	srv, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		return nil, err
	}
	out.say("  ready on port %d after %s.", srv.Port(), seconds(time.Since(begin)))
	return srv, nil
}

// noServerMessage is what a machine without PostgreSQL server binaries
// gets instead of the demo.
func noServerMessage() string {
	return "The demo needs a PostgreSQL server and found no server binaries to start one.\n\n" +
		pgtest.InstallHint + "\n\n" +
		"Or point the demo at a running server: pass -dsn 'postgres://user@host/db' or set " + envDSN + ".\n"
}

// dropTable removes the demo's table and view. It runs on the way out,
// when ctx may have ended already, so it gets a context of its own.
func (d *demo) dropTable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// The view depends on the table, so it goes first.
	for _, q := range []string{
		"DROP VIEW IF EXISTS " + pq.QuoteIdentifier("v_"+d.table),
		"DROP TABLE IF EXISTS " + pq.QuoteIdentifier(d.table),
	} {
		if _, err := d.db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("removing the demo table %s: %w", d.table, err)
		}
	}
	return nil
}

// isTerminal reports whether w is a terminal, which gets a progress line
// rewritten in place; files and pipes get one plain line at a time.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// plural is for the few counts that can be 1.
func plural(n int64, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return group(n) + " " + word + "s"
}

// group writes n with thousands separators, as people read row counts.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
