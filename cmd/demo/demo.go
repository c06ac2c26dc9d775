package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/dataset"
	"github.com/lib/pq"
)

const (
	// pauseWatch is how long the paused stream is watched: long enough to
	// see that nothing moves, short enough not to bore.
	pauseWatch = time.Second
	// pauseTimeout is the bound of the stream that is paused and forgotten.
	pauseTimeout = time.Second
	// backendGoneWait bounds the wait for the server to end the query: a
	// portal stream's end leaves its backend idle, a cut connection's
	// backend exits.
	backendGoneWait = 2 * time.Second
)

// demo holds what the steps share and what they measured, for the summary.
type demo struct {
	out   *printer
	db    *sql.DB // through jsonstream
	dsn   string
	table string
	rows  int
	seen  *tally // the observer of db's streams

	streamed struct {
		rows, bytes     int64
		active, lastID  int64
		elapsed, paused time.Duration
		firstRow        time.Duration
	}
	pause struct {
		at, whilePaused         int64
		length                  time.Duration
		heapBefore, heapAfter   uint64
		backendState, waitEvent string
	}
	timeout struct {
		waited      time.Duration
		err         error
		backendGone bool
		backendIdle bool
		selectOK    bool
	}
	early []closeResult
}

func (d *demo) load(ctx context.Context) error {
	d.out.heading("Loading %s JSON documents into table %s", group(int64(d.rows)), d.table)
	begin := time.Now()
	err := dataset.Load(ctx, d.db, d.table, d.rows, func(done int) {
		d.out.progress(fmt.Sprintf("  loaded %s of %s documents (%d%%) in %s",
			group(int64(done)), group(int64(d.rows)), done*100/d.rows, seconds(time.Since(begin))), true)
		if done == d.rows {
			d.out.say("  building the primary key, VACUUM ANALYZE...")
		}
	})
	if err != nil {
		return err
	}
	var size string
	err = d.db.QueryRowContext(ctx, "SELECT pg_size_pretty(pg_total_relation_size($1::regclass))", d.table).Scan(&size)
	if err != nil {
		return err
	}
	d.out.say("  loaded in %s; the table takes %s on the server.", seconds(time.Since(begin)), size)
	return nil
}

// pinned returns a connection of its own and its server process id: a
// query on it can then be looked up in pg_stat_activity.
func (d *demo) pinned(ctx context.Context) (*sql.Conn, int, error) {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return nil, 0, err
	}
	var pid int
	if err := conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		_ = conn.Close()
		return nil, 0, err
	}
	return conn, pid, nil
}

// stream reads every document through jsonstream.Each on one goroutine,
// the way an application would, while this one shows the progress and,
// when the reader pauses its stream half-way, looks at what the pause does.
func (d *demo) stream(ctx context.Context) error {
	d.out.heading("Streaming %s documents into dataset.Entity values, pausing half-way", group(int64(d.rows)))
	conn, pid, err := d.pinned(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	stream, err := jsonstream.NewStream()
	if err != nil {
		return err
	}
	begin := time.Now()
	rows, err := conn.QueryContext(ctx, dataset.Select(d.table, 0), stream)
	if err != nil {
		return err
	}

	pauseAt := max(1, int64(d.rows)/2)
	paused := make(chan struct{}, 1)
	finished := make(chan struct{})
	var got struct {
		rows, active, lastID int64
		err                  error
	}
	// Reader: decodes the documents and pauses its own stream half-way, as
	// a consumer that has to wait for something would. It ends at the end
	// of the result or when the stream fails: the context ending (the
	// stream watches it even while paused) or the Cancel deferred below.
	go func() {
		defer close(finished)
		for e, err := range jsonstream.Each[dataset.Entity](rows) {
			if err != nil {
				got.err = err
				return
			}
			got.rows++
			got.lastID = e.ID
			if e.Active {
				got.active++
			}
			if got.rows == pauseAt && stream.Pause() == nil {
				paused <- struct{}{}
			}
		}
	}()
	defer func() {
		// Only an early return finds the reader still at work.
		_ = stream.Cancel()
		<-finished
	}()

	interval := 100 * time.Millisecond
	if !d.out.live {
		interval = plainEvery
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	lastRows, lastAt := int64(0), begin
	line := func(force bool) {
		s, now := stream.Stats(), time.Now()
		d.out.progress(fmt.Sprintf("  %s rows  %s  %s rows/s  %s",
			group(s.Rows), megabytes(s.Bytes), group(rate(s.Rows-lastRows, now.Sub(lastAt))), s.State), force)
		lastRows, lastAt = s.Rows, now
	}
	for {
		select {
		case <-tick.C:
			line(false)
		case <-paused:
			line(true)
			if err := d.watchPause(ctx, stream, pid); err != nil {
				return err
			}
			// The rate after the pause is not to be averaged with it, nor
			// taken over the moment left of a tick that came during it.
			lastRows, lastAt = stream.Stats().Rows, time.Now()
			tick.Reset(interval)
		case <-finished:
			elapsed := time.Since(begin)
			s := stream.Stats()
			running := elapsed - s.PausedTotal
			d.out.progress(fmt.Sprintf("  %s rows  %s  %s rows/s  %s",
				group(s.Rows), megabytes(s.Bytes), group(rate(s.Rows, running)), s.State), true)
			d.out.endLine()
			if got.err != nil {
				return fmt.Errorf("streaming: %w", got.err)
			}
			st := &d.streamed
			st.rows, st.bytes, st.active, st.lastID = s.Rows, s.Bytes, got.active, got.lastID
			st.elapsed, st.paused = elapsed, s.PausedTotal
			st.firstRow = s.FirstRow
			d.out.say("  decoded %s dataset.Entity values (%s active, last id %d) in %s,",
				group(got.rows), group(got.active), got.lastID, seconds(elapsed))
			d.out.say("  %s rows/s not counting the pause; first row %s after the query started.",
				group(rate(s.Rows, running)), seconds(s.FirstRow))
			return nil
		}
	}
}

// watchPause shows, on a stream its reader has just paused, that nothing
// moves for a while, and resumes it.
func (d *demo) watchPause(ctx context.Context, stream *jsonstream.Stream, pid int) error {
	before, heapBefore := stream.Stats(), heapInuse()
	d.out.say("  Paused by the reader after row %s. Watching for %v:", group(before.Rows), pauseWatch)
	select {
	case <-time.After(pauseWatch):
	case <-ctx.Done():
		return ctx.Err()
	}
	after, heapAfter := stream.Stats(), heapInuse()
	var state, evType, ev sql.NullString
	err := d.db.QueryRowContext(ctx,
		"SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = $1", pid).
		Scan(&state, &evType, &ev)
	if err != nil {
		return fmt.Errorf("looking up the server backend: %w", err)
	}
	p := &d.pause
	p.at, p.whilePaused = before.Rows, after.Rows-before.Rows
	p.heapBefore, p.heapAfter = heapBefore, heapAfter
	p.backendState, p.waitEvent = state.String, ev.String
	if evType.Valid {
		p.waitEvent = evType.String + "/" + ev.String
	}

	d.out.say("    rows delivered   %s, then %s a second later (%s, %s while paused)",
		group(before.Rows), group(after.Rows), plural(after.Rows-before.Rows, "row"), megabytes(after.Bytes-before.Bytes))
	d.out.say("    heap in use      %s, then %s", megabytes(int64(heapBefore)), megabytes(int64(heapAfter)))
	d.out.say("    server backend   pid %d: state %s, wait event %s", pid, state.String, p.waitEvent)
	switch {
	case ev.String == "ClientWrite":
		d.out.say("                     (its socket buffer is full: the server waits for the client to read)")
	case state.String == "idle":
		d.out.say("                     (the rest of the result fit in the socket buffers: the server had sent it all)")
	}
	if err := stream.Resume(); err != nil {
		return err
	}
	p.length = stream.Stats().PausedTotal
	d.out.say("  Resumed after %s.", seconds(p.length))
	return nil
}

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// pauseTimeout pauses a stream with a pause timeout and leaves it paused,
// as a consumer that forgot it would.
func (d *demo) pauseTimeout(ctx context.Context) error {
	d.out.heading("A forgotten pause: WithPauseTimeout(%v)", pauseTimeout)
	stream, err := jsonstream.NewStream(jsonstream.WithPauseTimeout(pauseTimeout))
	if err != nil {
		return err
	}
	conn, pid, err := d.pinned(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	rows, err := conn.QueryContext(ctx, dataset.Select(d.table, 0), stream)
	if err != nil {
		return err
	}
	defer func() { _ = rows.Close() }() // the stream failed or was read; its error is reported below
	if !rows.Next() {
		return fmt.Errorf("pause timeout: no first row: %w", rows.Err())
	}
	if err := stream.Pause(); err != nil {
		return err
	}
	d.out.say("  Read 1 row, paused, and called Next, which waits for a Resume that never comes...")
	begin := time.Now()
	more := rows.Next()
	t := &d.timeout
	t.waited, t.err = time.Since(begin), rows.Err()
	if more || !errors.Is(t.err, jsonstream.ErrPauseTimeout) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pause timeout: Next returned %t, %w; want false, ErrPauseTimeout", more, t.err)
	}
	d.out.say("  Next returned false after %s; rows.Err(): %v", seconds(t.waited), t.err)
	s := stream.Stats()
	d.out.say("  stream state %s, %s", s.State, plural(s.PauseTimeouts, "pause timeout"))
	// Closing hands the cut connection back to database/sql, which sees it
	// is no longer valid and drops it instead of pooling it.
	_ = rows.Close()
	_ = conn.Close()

	t.backendGone, t.backendIdle, err = d.queryEnded(ctx, pid)
	if err != nil {
		return err
	}
	switch {
	case t.backendGone:
		d.out.say("  server backend pid %d is gone: cutting the connection ended it", pid)
	case t.backendIdle:
		d.out.say("  server backend pid %d ended the query: the stream ended its portal, and the connection went back to the pool", pid)
	default:
		d.out.say("  server backend pid %d still runs the query after %s", pid, seconds(backendGoneWait))
	}
	var one int
	if err := d.db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("SELECT 1 after the pause timeout: %w", err)
	}
	t.selectOK = one == 1
	d.out.say("  SELECT 1 on the same *sql.DB returned %d: the pool is usable", one)
	return nil
}

// queryEnded waits a little for the server process pid to end its query:
// to exit (the server notices a cut connection on its next write, which
// is immediate for a backend blocked in one) or to go idle (a portal
// stream ended its portal and kept the connection, which may be the one
// that asks, back in the pool).
func (d *demo) queryEnded(ctx context.Context, pid int) (gone, idle bool, err error) {
	deadline := time.Now().Add(backendGoneWait)
	for {
		var n, idleN int
		err := d.db.QueryRowContext(ctx, "SELECT count(*), count(*) FILTER (WHERE state = 'idle' OR pid = pg_backend_pid()) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n, &idleN)
		if err != nil {
			return false, false, err
		}
		if n == 0 || idleN == 1 {
			return n == 0, idleN == 1, nil
		}
		if time.Now().After(deadline) {
			return false, false, nil
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return false, false, ctx.Err()
		}
	}
}

// closeWay is one way of closing a result early, as the earlyClose step
// compares them.
type closeWay struct {
	name string
	// how says what the close does, for the narration.
	how string
	// open returns a pool of one connection, so that the backend pid
	// before and after the close tells whether the connection was kept.
	open func() (*sql.DB, error)
}

// closeResult is what an early close did.
type closeResult struct {
	name                string
	took, next          time.Duration
	pidBefore, pidAfter int
}

// kept reports whether the pool's one connection survived the close.
func (r closeResult) kept() bool { return r.pidBefore == r.pidAfter }

// earlyClose closes a result of the whole table right after its first
// row, on a pool of one connection, in jsonstream's default portal mode,
// its cursor mode, its single-statement mode and with lib/pq alone: how
// long Close takes, and whether the next query finds the same server
// backend.
func (d *demo) earlyClose(ctx context.Context) error {
	d.out.heading("Closing a %s-row result after its first row, on a pool of one connection", group(int64(d.rows)))
	ways := []closeWay{
		{"jsonstream, portal (default)", "reads off what is in flight, ends the portal",
			func() (*sql.DB, error) { return sql.Open(jsonstream.DriverName, d.dsn) }},
		{"jsonstream, cursor (FetchAuto)", "reads off the batch in flight, closes the cursor", func() (*sql.DB, error) {
			inner, err := pq.NewConnector(d.dsn)
			if err != nil {
				return nil, err
			}
			c, err := jsonstream.NewConnector(inner, jsonstream.WithFetchSize(jsonstream.FetchAuto))
			if err != nil {
				return nil, err
			}
			return sql.OpenDB(c), nil
		}},
		{"jsonstream, single statement", fmt.Sprintf("drains for up to %s, then cuts the connection", seconds(jsonstream.DefaultDrainTimeout)),
			func() (*sql.DB, error) {
				inner, err := pq.NewConnector(d.dsn)
				if err != nil {
					return nil, err
				}
				c, err := jsonstream.NewConnector(inner, jsonstream.WithStreamMode(jsonstream.ModeSingle))
				if err != nil {
					return nil, err
				}
				return sql.OpenDB(c), nil
			}},
		{"lib/pq", fmt.Sprintf("reads the remaining %s", plural(int64(d.rows)-1, "row")),
			func() (*sql.DB, error) { return sql.Open("postgres", d.dsn) }},
	}
	q := dataset.Select(d.table, 0)
	for _, w := range ways {
		db, err := w.open()
		if err != nil {
			return err
		}
		res, err := closeAfterFirstRow(ctx, db, q)
		_ = db.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		res.name = w.name
		d.early = append(d.early, res)
		fate := "kept"
		if !res.kept() {
			fate = "cut (the next query opened a new one)"
		}
		d.out.say("  %-30s rows.Close() took %-8s (%s)", w.name, seconds(res.took), w.how)
		d.out.say("  %-30s backend pid %d, then %d: connection %s; the next query took %s", "", res.pidBefore, res.pidAfter, fate, seconds(res.next))
	}
	return nil
}

// closeAfterFirstRow runs query on db, a pool of one connection, reads
// one row and times Close and the query after it, noting the backend pid
// before and after.
func closeAfterFirstRow(ctx context.Context, db *sql.DB, query string) (closeResult, error) {
	var res closeResult
	db.SetMaxOpenConns(1)
	if err := db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&res.pidBefore); err != nil {
		return res, err
	}
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return res, err
	}
	if !rows.Next() {
		_ = rows.Close()
		return res, fmt.Errorf("early close: no first row: %w", rows.Err())
	}
	begin := time.Now()
	err = rows.Close()
	res.took = time.Since(begin)
	if err != nil {
		return res, fmt.Errorf("early close: %w", err)
	}
	begin = time.Now()
	if err := db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&res.pidAfter); err != nil {
		return res, fmt.Errorf("the query after the early close: %w", err)
	}
	res.next = time.Since(begin)
	return res, ctx.Err()
}

func (d *demo) summary() {
	d.out.heading("Summary")
	w := tabwriter.NewWriter(d.out.stdout, 0, 0, 3, ' ', 0)
	row := func(name, format string, args ...any) {
		_, _ = fmt.Fprintf(w, "  %s\t"+format+"\n", append([]any{name}, args...)...)
	}
	st, p, t := &d.streamed, &d.pause, &d.timeout
	row("rows streamed", "%s, decoded into dataset.Entity", group(st.rows))
	row("data", "%s", megabytes(st.bytes))
	row("throughput", "%s rows/s (pause excluded)", group(rate(st.rows, st.elapsed-st.paused)))
	row("time to first row", "%s (Stats.FirstRow: from sending the query to the first row)", seconds(st.firstRow))
	row("pause", "%s at row %s, %s read while paused", seconds(p.length), group(p.at), plural(p.whilePaused, "row"))
	row("heap while paused", "%s, then %s", megabytes(int64(p.heapBefore)), megabytes(int64(p.heapAfter)))
	row("server while paused", "state %s, wait event %s", p.backendState, p.waitEvent)
	timeout := fmt.Sprintf("ErrPauseTimeout after %s", seconds(t.waited))
	switch {
	case t.backendGone:
		timeout += ", backend gone"
	case t.backendIdle:
		timeout += ", backend idle, connection kept"
	}
	if t.selectOK {
		timeout += ", SELECT 1 ok"
	}
	row(fmt.Sprintf("pause timeout (%v)", pauseTimeout), "%s", timeout)
	for i, r := range d.early {
		name := ""
		if i == 0 {
			name = "early close after 1 row"
		}
		conn := "same backend"
		if !r.kept() {
			conn = "new backend"
		}
		row(name, "%s %s, %s", r.name, seconds(r.took), conn)
	}
	row("the observer saw", "%s", d.seen)
	_ = w.Flush() // to the terminal: a failed write has nowhere better to go
}
