package jsonstream

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
)

// A portal stream runs its query itself, in the extended protocol, on the
// socket of a lib/pq connection that lib/pq left idle: Parse, Bind,
// Describe, then Execute of the unnamed portal for a batch of rows at a
// time, each followed by Flush and none by Sync (but for a bounded query,
// whose whole result is asked for at once: bounded.go). An unnamed portal lives
// until Sync ends its transaction, so the server runs the query as one
// statement and stops after each batch until the next Execute comes; the
// stream keeps a window of Executes outstanding, so that on a fast link
// the server never waits for one, and never has more than the window to
// send. Stopping the stream early reads off what is in flight (at most
// the window), closes the portal and sends Sync: the connection, its
// session and the caller's transaction stay as they were.
//
// lib/pq does everything else on the connection and never sees these
// messages: a ReadyForQuery ends the stream's exchange as it ends one of
// lib/pq's, and what lib/pq tracks from the messages it reads
// (ParameterStatus, notifications, the transaction status) is handed back
// to it (handBack).

// portalFirstRows is the first batch's row count: small, so that an early
// close after a few rows (a QueryRow) has little to read off.
const portalFirstRows = 16

// portalMaxRows and portalMaxBytes bound a batch: its rest is what an
// early close reads off at most, twice over with the window.
const (
	portalMaxRows  = 1 << 16
	portalMaxBytes = 4 << 20
)

// A stream is long once it has read portalLongRows rows. Until then it
// asks for one batch at a time, each twice the last, so that a stream
// stopped after a few hundred rows (a page, a QueryRow) has at most its
// current batch to read off, and the server has made few rows that no one
// reads; a long one keeps the window full and grows its batches fourfold,
// so that a slow link is filled fast.
//
// On a slow link, where no Sync that ended a stream read whole came back
// sooner than portalSlowRTT (conn.linkRTT), a round trip costs more than
// the server takes to make a few hundred rows, so the stream does as a
// long one from its second batch: a result of a few thousand rows then
// takes a few round trips, not one per doubling. A connection with no
// such Sync yet counts as fast. (A first reply would not do: it takes the
// server's planning and executor start too, which on a new backend, with
// its caches cold, is a millisecond or more on any link.)
const (
	portalLongRows = 1024
	portalSlowRTT  = time.Millisecond
)

// portalHeadroom is how many times the bytes a round trip carries at the
// measured rate a batch holds. The rate is measured through the window,
// so at 1 a window too small for the link would hold its own estimate
// down: batches stayed at the least size (autoBatchBytes) through a 2 ms
// round trip, and the server waited for the next Execute (ClientRead)
// 15% of the time (BenchmarkProxyWindow). At 2 a batch that the window
// limits grows with each estimate until the link or the server limits it.
const portalHeadroom = 2

// portalWriteRestRows is the batch in which the end of a failed write
// reads the rest of its result (writeRestBytes).
const portalWriteRestRows = 1024

// portalWindow is how many Executes a long stream keeps outstanding: with
// two, the next batch is asked for while one is being sent, so the server
// never waits for the client.
const portalWindow = 2

// ErrPortalQuery is wrapped by the error of a query that portal mode
// (WithStreamMode(ModePortal)) cannot run, and nothing of it runs: several
// statements in one text, a statement that returns no rows through a
// portal (COPY, transaction control, SET…), or a connection whose wire
// jsonstream does not own (see WithStreamMode).
var ErrPortalQuery = errors.New("jsonstream: portal mode cannot run this query")

// portal is the driver.Rows of a portal stream. The consumer's Next and
// Close, and a failure that ends the stream from another goroutine
// (release), talk to the server through the wire; wireMu decides which.
type portal struct {
	conn  *conn
	r     *rows
	w     *wire
	query string
	// text is the scan of query (sqltext.go).
	text queryText
	// simple is set for a query that lib/pq would send in a simple Query
	// (no arguments, not a prepared statement), whose replies differ.
	simple bool
	// stmt is the prepared statement whose query this is, nil for a
	// query of the conn: the stream binds the statement by its name.
	stmt *stmt
	// byteaEmpty is set where lib/pq asks for bytea results in binary (a
	// prepared statement's query, or a query with arguments, unless
	// binary_parameters or disable_prepared_binary_result say otherwise):
	// an empty one is then an empty slice, not nil.
	byteaEmpty bool
	// fields and names describe the columns.
	fields []pgField
	names  []string
	// startTZ is the session's TimeZone when the query went out: lib/pq
	// reads a change the query makes after the whole result (the server
	// reports it before ReadyForQuery), so every row is decoded in it,
	// though in a transaction block the report comes after the first
	// batch (location).
	startTZ *string

	// outstanding counts the Executes sent whose reply (PortalSuspended or
	// CommandComplete) was not read yet; window is how many may be, and
	// batch the row count of the next Execute.
	outstanding, window int
	batch               int32
	// rowsIn and bytesIn count the rows and their bytes read, for the
	// batch size; sent is when the query went out (when Query was called,
	// unless a round trip described the statement first), and rtt how
	// long its first reply took: about a round trip, with the server's
	// planning (zero for a result asked for whole: bounded.go).
	// lastEnd and lastBytes are when the last batch's end was read and
	// bytesIn then; lastRate is the bytes per nanosecond of the batch
	// before it (grow).
	rowsIn, bytesIn int64
	sent            instant
	rtt             time.Duration
	// slowLink is set when the conn's link round trip is portalSlowRTT or
	// more (long); grown once the first grant sized the second batch.
	// syncSent is when the Sync after a result read whole went out.
	slowLink, grown bool
	syncSent        time.Time
	lastEnd         time.Time
	lastBytes       int64
	lastRate        float64
	// before is the transaction status lib/pq last saw.
	before byte
	// complete is set once the portal's CommandComplete was read: no row
	// follows. finished is set once the Sync that ends the stream was
	// sent, and ended once its ReadyForQuery was read, or the connection
	// lost: the wire is then lib/pq's again. pendingZ counts the Syncs
	// whose ReadyForQuery is still to come: in a transaction block the
	// first batch is asked for with a Sync (the portal outlives it there),
	// so that a small result takes one round trip, as in lib/pq.
	complete, finished, ended bool
	pendingZ                  int
	// serverErr is the server's error for the query, reported once its
	// ReadyForQuery is read. errQuery is the text lib/pq attaches to it:
	// the query's until the first row, none after.
	serverErr error
	errQuery  string
	// giveBack collects the messages lib/pq must read still: ParameterStatus
	// and NotificationResponse. notified is set when a notification is
	// among them: lib/pq's handler must get it now, not at lib/pq's next
	// read, which the next portal stream would put off again.
	giveBack []byte
	notified bool
	// whole is set when Close found nothing of the result left unread;
	// readOff when Close found the whole result asked for, with the Sync
	// that ends it (bounded.go, syncWhole), so that what was left of it
	// was read off, as a drain reads it, and no portal was closed.
	whole, readOff bool
	// owed is set when Close sent the end without reading its replies
	// (owed.go); unsynced while that end has no Sync, endLeft counting the
	// CommandCompletes it still owes; resend is set when what was written
	// after it must be sent again (recover).
	// endedFirst is set when the session ended before an owed end was
	// carried out, unrecoverable when what was written after an end
	// without Sync that failed could not be sent again; lostErr is the
	// read error that lost the connection while an owed end was read.
	owed, unsynced, resend, endedFirst, unrecoverable bool
	lostErr                                           error
	endLeft                                           int
	// pausesSeen is the stream's pause count at the last grant. A pause
	// since then leaves the server waiting for the next Execute as long as
	// it lasts, time in which the server may end the session (a recovery
	// conflict on a standby); the next grant then waits for the batches
	// in flight and a look at what follows them (catchUp).
	pausesSeen int64

	// wireMu is held by whoever talks to the server: the consumer's Next
	// and Close, or release.
	wireMu sync.Mutex
	// mu orders a blocking read of the consumer's against a failure from
	// another goroutine (interrupt): the failure either finds the read
	// pending and bounds it, or finds none and leaves the socket alone.
	mu       sync.Mutex
	inFlight bool
	// interrupted is set once a failure came (interrupt): every later
	// read of the consumer's that waits on the network is bounded too,
	// though none was pending when the failure came. ending is set while
	// the end (close) reads, within a bound of its own; watched while the
	// end's reads without a bound watch the contexts (watchEnd).
	interrupted, ending, watched bool
	// bounded is set when a failure bounded a read of the consumer's
	// (interrupt): the deadline may still be on the socket when that read
	// ended the stream, for Close to clear. The stream's own end clears
	// it: a Close that comes after such an end (release) leaves the socket
	// alone, which another stream or an owed end's Sync may be using.
	bounded bool
	// watch is the watch of the query's context, nil when it cannot end;
	// watchBox holds it, allocated with the portal.
	watch    *queryWatch
	watchBox queryWatch

	// recyclable is set for a stream whose portal nothing but its rows
	// can reach: no Stream, observer, resume key or context that can end
	// (recycle.go).
	recyclable bool
	// alone is set while such a stream starts, before Query returns its
	// rows: nothing but the goroutine that started it can reach it, and
	// nothing can interrupt its reads (read).
	alone bool
}

var (
	_ driver.Rows                           = (*portal)(nil)
	_ driver.RowsColumnTypeScanType         = (*portal)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*portal)(nil)
	_ driver.RowsColumnTypeLength           = (*portal)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*portal)(nil)
)

// portalReady reports whether the connection can carry a portal stream
// now: jsonstream owns its wire (a lib/pq connection from a DSN or a
// pq.Config, whose messages the framer follows) and lib/pq left it idle.
func (c *conn) portalReady() bool {
	return c.wireOK && c.sock != nil && c.sock.frames.following() &&
		(c.sock.frames.idle() || c.sock.idleButOwed()) && !c.isCut()
}

// portalText reports why the text cannot run as a portal stream, or ""
// when it can: it must be one statement that a portal runs and that
// returns rows or may (a query, a data-changing statement, SHOW,
// EXPLAIN). A query without arguments (simple) lib/pq sends in a simple
// Query, which runs every statement in it; a text the scan is unsure of is
// left to lib/pq then. A prepared statement's text is one statement: the
// server parsed it. A text with a NUL byte is always lib/pq's.
func portalText(text queryText, simple bool) string {
	if text.nul {
		// lib/pq sends it as it is, and the server's error depends on
		// the message it lands in: a simple Query's is not a Parse's.
		return "it holds a NUL byte"
	}
	if simple {
		switch {
		case !text.certain, text.malformed:
			return "the scan cannot be sure where its statement ends"
		case text.statements != 1:
			return "it does not hold exactly one statement"
		case text.params > 0:
			return "it refers to a parameter but has no arguments"
		}
	}
	if oneOf(text.first, portalFirstWords) {
		return ""
	}
	return "a " + strings.ToLower(text.first) + " statement returns no rows to stream"
}

// portalFirstWords are the first keywords of the statements a portal
// stream runs.
var portalFirstWords = []string{"select", "values", "table", "with", "(", "insert", "update", "delete", "merge", "show", "explain"}

// oneOf reports whether s is one of words (lower case), in any case; it
// never allocates.
func oneOf(s string, words []string) bool {
	for _, w := range words {
		if strings.EqualFold(s, w) {
			return true
		}
	}
	return false
}

// queryPortal runs query as a portal stream. The Stream st is claimed
// before anything is sent; a query the server refused leaves it and fires
// no event. Errors come where lib/pq reports them: what fails before the
// first row (parsing, planning, the first row's execution) from Query,
// with the query's text in the *pq.Error as lib/pq attaches it; what
// fails later from Next.
func (c *conn) queryPortal(ctx context.Context, owner any, query string, text queryText, args []driver.NamedValue, st *Stream, r *rows, start instant) (driver.Rows, error) {
	if err := claim(st); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		unclaim(st)
		return nil, err
	}
	c.ran()
	if c.wire == nil {
		c.wire = newWire(c.sock)
	}
	p := c.takePortal()
	p.conn, p.r, p.w, p.query, p.text, p.errQuery = c, r, c.wire, query, text, query
	p.window, p.batch, p.simple, p.sent = 1, portalFirstRows, owner == c && len(args) == 0, start
	p.recyclable = st == nil && ctx.Done() == nil && r.settings.observer == nil && r.settings.resume == nil
	if st, ok := owner.(*stmt); ok {
		// lib/pq attaches no text to a prepared statement's errors.
		p.stmt, p.errQuery = st, ""
	}
	p.byteaEmpty = (p.stmt != nil || !p.simple && !c.binaryParams) && !c.textResults
	p.before = byte(c.sock.frames.status.Load())
	p.startTZ = c.sock.frames.timeZone.Load()
	r.portal = p
	// Until the rows are open, an end of the context bounds the read the
	// query waits in, as a failure does (ctxwatch.go).
	var w *queryWatch
	if ctx.Done() != nil {
		w = p.watchQuery(ctx)
		p.watch = w
	}
	c.portalOpen.Store(true)
	p.alone = p.recyclable
	err := p.start(args)
	p.alone = false
	if err != nil || p.ended {
		c.portalOpen.Store(false)
	}
	if w != nil && !w.started() {
		whole := err == nil && !p.ended && p.finished && p.w.bufferedReady() > 0
		if whole {
			// The exchange ended within the bound (syncWhole): what is
			// left of it is in the buffer, rows the consumer never gets,
			// and is read as an owed end's is. Handing the connection
			// back may take lib/pq a round trip (handBack's Ping, for a
			// notification): it gets a failed end's bound from now, not
			// what is left of the context's, which a link slower than
			// that would meet, losing a connection that answered.
			if !c.sock.beginDrain(time.Now().Add(max(failedEndTimeout, p.r.settings.drainTimeout))) {
				c.cut()
			}
			p.settle()
		}
		if err != nil || !p.ended || whole {
			if !p.ended {
				c.cut()
				p.ended = true
				c.portalOpen.Store(false)
			} else {
				// The exchange ended within the bound the context's end
				// armed (interrupt): the connection serves the next query
				// without it.
				c.clearDeadline()
			}
			unclaim(st)
			return nil, ctx.Err()
		}
	}
	if err != nil {
		if w != nil {
			w.stop()
		}
		unclaim(st)
		return nil, err
	}
	if portalStarted != nil {
		portalStarted(p)
	}
	return c.bindRows(ctx, p, st, r, start, nil, query), nil
}

// portalStarted, when set, is called by tests between a portal's start
// and the opening of its rows (queryWatch's binding phase).
var portalStarted func(*portal)

// portalEnding, when set, is called by tests as a portal's end has looked
// at its context, before it watches it (portal.watchFromNow).
var portalEnding func(*portal)

// start sends the query and reads the reply up to its first row, as
// lib/pq's Query does.
func (p *portal) start(args []driver.NamedValue) error {
	w := p.w
	if p.text.bounded && p.simple {
		// A bounded query without arguments: the simple Query lib/pq
		// sends (bounded.go).
		w.query(p.query)
		return p.sendFirst(true)
	}
	var formats []int16
	values := make([][]byte, len(args))
	binaryParams := p.conn.binaryParams
	// lib/pq learns the parameters' count and types from the server
	// before it binds them (one more round trip), reports a count that
	// differs itself, and encodes a string or []byte for a bytea parameter
	// in hex. The stream asks too when the count may differ (or the scan
	// cannot be sure of it: a backslash in a string, whose meaning
	// standard_conforming_strings decides), or when a value's hex form
	// could mean other bytes than its plain form: the server reads plain
	// text for a bytea in the escape format, which gives the same bytes
	// unless the value holds a backslash, a NUL or is not UTF-8 (which the
	// server refuses in plain text), or, when the server's or the client's
	// encoding is not UTF8, a byte beyond ASCII (plain text is converted
	// to the server's encoding; hex is not). While an end is owed
	// (owed.go), its replies may yet change the client encoding: it is
	// not known.
	//
	// A prepared statement's query binds the statement lib/pq prepared,
	// whose parameter types and columns the stream asks for at its first
	// query (lib/pq has them from the Prepare).
	st := p.stmt
	var types []oid.Oid
	// described is set when the parameters' types are known, and asked
	// when that took a round trip, whose exchange a failure must end.
	described, asked := false, false
	switch {
	case len(args) >= 65536:
		return fmt.Errorf("pq: got %d parameters but PostgreSQL only supports 65535 parameters", len(args))
	case st != nil && st.described:
		types, p.fields, p.names = st.types, st.fields, st.names
		described = true
	case st != nil:
		w.describeStmt(st.name)
		w.flush()
		var err error
		if types, err = p.describeStatement(); err != nil {
			return err
		}
		st.types, st.fields, st.names, st.described = types, p.fields, p.names, true
		described, asked = true, true
	case binaryParams:
		w.parse(p.query)
	case !p.text.certain || p.text.params != len(args) ||
		typedArgs(args, !p.conn.sock.frames.notUTF8.Load() && p.conn.sock.owed == nil):
		w.parse(p.query)
		w.describe('S')
		w.flush()
		var err error
		if types, err = p.describeStatement(); err != nil {
			return err
		}
		if len(types) != len(args) {
			err := fmt.Errorf("pq: got %d parameters but the statement requires %d", len(args), len(types))
			return p.abort(err)
		}
		described, asked = true, true
	default:
		w.parse(p.query)
	}
	fail := func(err error) error {
		if asked {
			return p.abort(err)
		}
		w.out = w.out[:0]
		return err
	}
	if described && len(types) != len(args) {
		// A prepared statement's count, which database/sql checks first
		// unless a wrapper's NumInput says -1: lib/pq's error.
		return fail(fmt.Errorf("pq: got %d parameters but the statement requires %d", len(args), len(types)))
	}
	if described && !binaryParams {
		for i, a := range args {
			var err error
			if values[i], err = encodeArg(a.Value, types[i]); err != nil {
				return fail(err)
			}
		}
	} else {
		for i, a := range args {
			var err error
			switch v := a.Value.(type) {
			case []byte:
				if binaryParams {
					if formats == nil {
						formats = make([]int16, len(args))
					}
					formats[i] = 1
					values[i] = v
					continue
				}
			}
			if values[i], err = encodeArg(a.Value, 0); err != nil {
				return fail(err)
			}
		}
	}
	// The columns are described as lib/pq describes them: a prepared
	// statement's from its description, a query's with arguments from
	// its statement's (lib/pq prepares it), before planning with the
	// values bound, which may give a column a length, a precision or a
	// scale; a query without them, or with binary_parameters, from its
	// portal's.
	describeStmt := !described && !p.simple && !binaryParams
	if describeStmt {
		w.describe('S')
	}
	var name string
	if st != nil {
		name = st.name
	}
	w.bind(name, formats, values)
	if !described && !describeStmt {
		w.describe('P')
	}
	switch {
	case p.text.bounded:
		// The whole result, and Sync (bounded.go).
		w.execute(0)
		w.sync()
	case p.before == txStatusInTx || p.before == txStatusFailed:
		w.execute(p.batch)
		w.sync()
		p.pendingZ = 1
	default:
		w.execute(p.batch)
		w.flush()
	}
	if asked {
		p.sent = clock() // past the round trip that described the statement
	}
	return p.sendFirst(p.text.bounded)
}

// sendFirst sends the query's first messages, built in the wire, and
// reads the reply up to its first row, or to the first sign of the end.
// whole is set when they ask for the whole result and end with the Sync
// that ends the stream (bounded.go).
func (p *portal) sendFirst(whole bool) error {
	w := p.w
	if whole {
		p.finished = true
		p.pendingZ = 1
	}
	p.outstanding = 1
	if err := w.send(); err != nil {
		return p.lost(err)
	}
	// The replies up to the first row, or to the first sign of the end.
	for {
		typ, body, err := p.read()
		if err != nil {
			return p.lost(err)
		}
		if p.rtt == 0 && !whole {
			// A result asked for whole asks for nothing more: no
			// batch is sized from its round trip (grow).
			p.rtt = max(p.sent.elapsed(), 1)
			p.slowLink = p.conn.linkRTT.Load() >= int64(portalSlowRTT)
		}
		switch typ {
		case '1', '2', 't':
			// ParseComplete, BindComplete, and the ParameterDescription of
			// a statement described in the same exchange.
		case 'n':
			p.fields, p.names = nil, nil
		case 'T':
			if err := p.describe(body); err != nil {
				return p.lost(err)
			}
		case 'D', 's', 'C':
			// The query did not fail before its first row: the consumer
			// reads from here.
			if typ == 'C' && p.fields == nil && p.simple {
				// A statement without rows, which lib/pq's simple Query
				// reads to its ReadyForQuery.
				if err := p.skip(typ, body); err != nil {
					return err
				}
				return p.failStart()
			}
			w.unread(body)
			p.errQuery = ""
			if typ != 's' && p.pendingZ == 0 && w.restBuffered() {
				p.syncWhole()
			}
			return nil
		case 'E':
			if err := p.skip(typ, body); err != nil {
				return err
			}
			return p.failStart()
		default:
			if !p.async(typ, body) {
				return p.lost(fmt.Errorf("%w: %q before the first row", errProtocol, typ))
			}
		}
	}
}

// syncWhole ends the exchange of a result that its first reply held
// whole, outside a transaction block (the first batch went without a
// Sync): the Sync goes out at once and its ReadyForQuery is awaited before
// the rows are handed out, as lib/pq's Query returns once its exchange is
// over. The implicit transaction commits, as lib/pq's does, before the
// consumer reads a row; Next and Close then read the rest in order from
// the buffer, without waiting. Awaited here, the end is never waited for
// beside database/sql's goroutine that watches a context that can end:
// that goroutine runs when the query waits, and the end's wait in Close
// would wake it. Its round trip is an exact sample of the link's
// (sampleLink).
//
// A connection that fails here fails the stream where the rest is read:
// the rows that came are the consumer's, and Next or Close meets the
// failure as it would have met it without this wait, on the socket (one
// that could not be written to is cut, so that a read meets it). Query
// never reports it: database/sql would run again, on another connection,
// a query whose commit may have been carried out. A context that ended
// already gets no Sync: Query returns its error and the cut rolls the
// query back (queryPortal). One that ends during the wait bounds it
// (interrupt), and Query returns its error; the connection is kept if
// the ReadyForQuery came within the bound.
func (p *portal) syncWhole() {
	p.mu.Lock()
	interrupted := p.interrupted
	p.mu.Unlock()
	if interrupted || p.watch != nil && p.watch.ctx.Err() != nil {
		return
	}
	p.finished = true
	p.pendingZ++
	p.w.sync()
	if p.w.send() != nil {
		p.conn.cut()
		return
	}
	var sent time.Time
	if n := p.conn.syncs.Add(1); n <= linkSamplesFirst || n%linkSampleEvery == 0 {
		sent = time.Now()
	}
	p.pending(true)
	err := p.w.awaitReady()
	p.pending(false)
	if err == nil && !sent.IsZero() {
		p.sampleLink(time.Since(sent))
	}
}

// typedArgs reports whether an argument's encoding depends on its
// parameter's type (start); utf8Session is set when the session's server and
// client encodings are both UTF8, so that plain text is not converted.
func typedArgs(args []driver.NamedValue, utf8Session bool) bool {
	for _, a := range args {
		var b []byte
		switch v := a.Value.(type) {
		case string:
			if strings.IndexByte(v, '\\') >= 0 || strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) ||
				!utf8Session && !isASCII(v) {
				return true
			}
			continue
		case []byte:
			b = v
		default:
			continue
		}
		if bytes.IndexByte(b, '\\') >= 0 || bytes.IndexByte(b, 0) >= 0 || !utf8.Valid(b) ||
			!utf8Session && !isASCII(b) {
			return true
		}
	}
	return false
}

// isASCII reports whether s holds only ASCII bytes.
func isASCII[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// describeStatement reads the reply to Parse and Describe of the
// statement: the parameters' types, and the columns.
func (p *portal) describeStatement() ([]oid.Oid, error) {
	if err := p.w.send(); err != nil {
		return nil, p.lost(err)
	}
	var types []oid.Oid
	for {
		typ, body, err := p.read()
		if err != nil {
			return nil, p.lost(err)
		}
		switch typ {
		case '1':
		case 't':
			if len(body) < 2 {
				return nil, p.lost(fmt.Errorf("%w: short ParameterDescription", errProtocol))
			}
			n := int(binary.BigEndian.Uint16(body))
			if len(body) < 2+4*n {
				return nil, p.lost(fmt.Errorf("%w: short ParameterDescription", errProtocol))
			}
			types = make([]oid.Oid, n)
			for i := range types {
				types[i] = oid.Oid(binary.BigEndian.Uint32(body[2+4*i:]))
			}
		case 'n':
			p.fields, p.names = nil, nil
			return types, nil
		case 'T':
			if err := p.describe(body); err != nil {
				return nil, p.lost(err)
			}
			return types, nil
		case 'E':
			if err := p.skip(typ, body); err != nil {
				return nil, err
			}
			return nil, p.failStart()
		default:
			if !p.async(typ, body) {
				return nil, p.lost(fmt.Errorf("%w: %q in a statement's description", errProtocol, typ))
			}
		}
	}
}

// abort ends a start that failed on the client's side after Parse went
// out: Sync, and the reply read to its ReadyForQuery.
func (p *portal) abort(err error) error {
	p.w.out = p.w.out[:0]
	p.outstanding = 0
	if e := p.syncAndWait(); e != nil {
		return e
	}
	return err
}

// failStart reads the reply of a query that ended before its first row
// to its ReadyForQuery, and returns the server's error, if any.
func (p *portal) failStart() error {
	if err := p.syncAndWait(); err != nil {
		return err
	}
	return p.takeServerErr()
}

// syncAndWait sends Sync and reads to the ReadyForQuery, skipping the
// rest of the reply; a server error met on the way is kept in serverErr.
func (p *portal) syncAndWait() error {
	if err := p.finish(); err != nil {
		return err
	}
	for !p.ended {
		typ, body, err := p.read()
		if err != nil {
			return p.lost(err)
		}
		if err := p.skip(typ, body); err != nil {
			return err
		}
	}
	return nil
}

// errBadRowDescription is describe's error, made once: describe runs
// for every query.
var errBadRowDescription = fmt.Errorf("%w: malformed RowDescription", errProtocol)

// describe reads a RowDescription. The fields of the connection's last
// description (a small one) serve again when the server sends the same
// bytes, as it does for a query run again: fields are never changed once
// read, and the names, which Columns hands to the caller, are the
// stream's own.
func (p *portal) describe(b []byte) error {
	if len(b) < 2 {
		return errBadRowDescription
	}
	c := p.conn
	if c.descFields != nil && string(b) == string(c.desc) {
		p.fields = c.descFields
		p.names = make([]string, len(p.fields))
		for i := range p.fields {
			p.names[i] = p.fields[i].name
		}
		return nil
	}
	desc := b
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	p.fields = make([]pgField, n)
	p.names = make([]string, n)
	for i := range p.fields {
		end := 0
		for end < len(b) && b[end] != 0 {
			end++
		}
		if end+19 > len(b) {
			return errBadRowDescription
		}
		f := &p.fields[i]
		f.name = string(b[:end])
		p.names[i] = f.name
		b = b[end+1:]
		f.oid = oid.Oid(binary.BigEndian.Uint32(b[6:]))
		f.size = int16(binary.BigEndian.Uint16(b[10:]))
		f.mod = int32(binary.BigEndian.Uint32(b[12:]))
		b = b[18:]
	}
	if len(desc) <= descKept {
		c.desc, c.descFields = append(c.desc[:0], desc...), p.fields
	}
	return nil
}

// descKept is the size of the largest RowDescription whose fields a
// connection keeps for the next stream (describe).
const descKept = 1 << 10

// read returns the next message, marking a read that has to wait on the
// network as pending (interrupt).
func (p *portal) read() (byte, []byte, error) {
	if p.conn.sock.owed != nil {
		// The last stream's end comes first, bounded as a read of the
		// stream's own would be. Its error is the stream's only when the
		// server refused the end inside a transaction block, which it
		// aborted (payOwed): a session that ended first left its FATAL to
		// be read next, and an end fails unrecoverably only behind a write
		// with two Syncs, which a stream's write never holds (recover).
		p.pending(true)
		err := p.conn.sock.payOwed()
		p.pending(false)
		var pe *pq.Error
		if errors.As(err, &pe) {
			return 0, nil, err
		}
		// The last stream's replies went before this query's: the
		// TimeZone its rows are decoded in is the one they left.
		p.startTZ = p.conn.sock.frames.timeZone.Load()
	}
	if p.w.buffered() || p.alone {
		return p.w.next()
	}
	p.pending(true)
	typ, body, err := p.w.next()
	p.pending(false)
	return typ, body, err
}

func (p *portal) pending(on bool) {
	p.mu.Lock()
	p.inFlight = on
	if on && p.interrupted && !p.ending {
		p.bounded = true
		p.conn.sock.interrupt(p.r.settings.drainTimeout)
	}
	p.mu.Unlock()
}

// interrupt is how a failure (Cancel, pause timeout, context) stops a
// portal stream from any goroutine: a read that waits on the network gets
// the drain timeout to finish, then fails, and the consumer's Next returns
// the failure; the Close that follows reads off the rest, at most the
// window, within its own bound. Without a read waiting, whoever ends the
// stream next (release, or the consumer's Close) does the same.
func (p *portal) interrupt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interrupted = true
	if p.inFlight && !p.ending {
		p.bounded = true
		p.conn.sock.interrupt(p.r.settings.drainTimeout)
	}
}

// release ends the portal of a stream that just failed, from the
// failure's goroutine, so that the server ends the query and frees its
// snapshot and locks at once. When the consumer is on the wire, its read
// is bounded (interrupt) and its Close ends the portal.
func (p *portal) release() {
	if p.wireMu.TryLock() {
		p.releaseLocked()
	}
}

// endNow is release for a caller that must find the end over when it
// returns (endForTx): it waits for an end that another goroutine is
// carrying out.
func (p *portal) endNow() {
	p.wireMu.Lock()
	p.releaseLocked()
}

// releaseLocked is release with p.wireMu held, which it unlocks.
func (p *portal) releaseLocked() {
	defer p.wireMu.Unlock()
	if p.ended {
		return
	}
	// Until the end is over, past the ReadyForQuery that gives the wire
	// back, no statement may start on the connection (usable).
	p.conn.releasing.Store(true)
	defer p.conn.releasing.Store(false)
	// The consumer may still be scanning the row its last Next returned,
	// whose values alias the wire's buffer until its next Next: the end
	// reads into a buffer of its own.
	p.w.detach()
	_ = p.close(nil)
}

// Columns implements driver.Rows.
func (p *portal) Columns() []string { return p.names }

// Next implements driver.Rows.
func (p *portal) Next(dest []driver.Value) error {
	p.wireMu.Lock()
	defer p.wireMu.Unlock()
	for {
		if p.ended {
			if p.serverErr != nil {
				err := p.serverErr
				p.serverErr = nil
				return err
			}
			if p.r.state.load() == Failed {
				return p.r.err()
			}
			return io.EOF
		}
		if p.outstanding < p.window && !p.finished {
			if p.r.state.load() == Failed {
				// A failure came: nothing more is asked for, and its end
				// (release, or the Close that follows) reads off the rest.
				return p.r.err()
			}
			// A Pause that comes now holds the row in rows.Next.
			ready, err := p.catchUp()
			if err != nil {
				return err
			}
			if ready {
				if err := p.grant(); err != nil {
					return err
				}
			}
		}
		typ, body, err := p.read()
		if err != nil {
			if isTimeout(err) && p.r.state.load() == Failed {
				// A failure bounded the read (interrupt). What came is
				// kept in the wire's buffer, so the end (release, or the
				// Close that follows) goes on from there, with a bound
				// of its own.
				return p.r.err()
			}
			return p.lost(err)
		}
		if typ == 'D' {
			return p.row(dest, body)
		}
		if err := p.skip(typ, body); err != nil {
			return err
		}
	}
}

// catchUp reports whether the next Executes may go out now: at once,
// unless the stream was paused since the last grant. Then only once the
// batches in flight and whatever the server sent after them were read,
// and a FATAL that ended the session while the stream was paused is the
// stream's error. Written to a connection the server closed, an Execute
// is answered by a reset that drops what the server had not yet sent,
// which on a paused TCP connection includes the rest of its last batch
// and the FATAL behind it.
func (p *portal) catchUp() (bool, error) {
	n := p.r.pauseCount()
	if n == p.pausesSeen {
		return true, nil
	}
	if p.outstanding > 0 || p.w.holds() {
		return false, nil // read on
	}
	p.pausesSeen = n
	if pe := p.conn.sock.peekFatal(); pe != nil {
		return false, p.lost(p.sessionEnded(pe))
	}
	return true, nil
}

// grant asks for batches until the window is full.
func (p *portal) grant() error {
	if !p.grown {
		// The second batch is sized from the first's rows, not a copy
		// of it.
		p.grown = true
		p.grow()
	}
	for p.outstanding < p.window {
		p.w.execute(p.batch)
		p.outstanding++
		p.grow()
	}
	p.w.flush()
	if err := p.w.send(); err != nil {
		return p.lost(err)
	}
	return nil
}

// sampleLink takes rtt, the round trip of a Sync that ended a stream read
// whole, into the conn's link round trip: the shortest so far.
func (p *portal) sampleLink(rtt time.Duration) {
	c := p.conn
	for {
		cur := c.linkRTT.Load()
		if cur != 0 && cur <= int64(rtt) || c.linkRTT.CompareAndSwap(cur, max(int64(rtt), 1)) {
			return
		}
	}
}

// long reports whether the stream keeps its window full: it is long
// (portalLongRows), or on a slow link past its first batch (portalSlowRTT).
func (p *portal) long() bool {
	return p.rowsIn >= portalLongRows || p.slowLink && p.rowsIn > 0
}

// batchEnded notes the end of a batch (PortalSuspended): the rate at
// which the batch before it came, for grow.
func (p *portal) batchEnded() {
	now := time.Now()
	if !p.lastEnd.IsZero() {
		if d := now.Sub(p.lastEnd); d > 0 {
			p.lastRate = float64(p.bytesIn-p.lastBytes) / float64(d)
		}
	}
	p.lastEnd, p.lastBytes = now, p.bytesIn
}

// grow sizes the next batch. Batches grow from a small first one, so that
// an early close after a few rows has little to read off, twofold and then
// fourfold once the stream is long, up to portalHeadroom times the bytes
// the link carries in a round trip at the rate the stream is read (so
// that the server never waits for the next Execute), and at least
// autoBatchBytes, within portalMaxRows and portalMaxBytes, and within what
// a Unix socket buffers. The rate is the greater of the whole stream's
// and the last batch's: the whole stream's lags behind a window that
// grows, and both are held down by a window too small for the link, which
// the headroom outgrows.
func (p *portal) grow() {
	factor := int64(2)
	if p.long() {
		factor = 4
	}
	n := min(int64(p.batch)*factor, portalMaxRows)
	if p.rowsIn == 0 {
		p.batch = int32(n)
		return
	}
	target := int64(autoBatchBytes)
	if elapsed := p.sent.elapsed() - p.rtt; elapsed > 0 {
		rate := max(float64(p.bytesIn)/float64(elapsed), p.lastRate)
		inFlight := int64(min(portalHeadroom*rate*float64(p.rtt), portalMaxBytes))
		target = min(max(target, inFlight), portalMaxBytes)
	}
	// A paused stream's server must finish what it was asked for and wait
	// for the next Execute (ClientRead), not wait to write (where it cannot
	// act on a recovery conflict's cancel): on a Unix socket, whose
	// buffers stay small, the window stays within half of them.
	if buf := int64(p.conn.sock.unixBuffer()); buf > 0 {
		target = max(min(target, buf/(2*portalWindow)), 8<<10)
	}
	if perRow := p.bytesIn / p.rowsIn; perRow > 0 {
		n = min(n, max(portalFirstRows, target/perRow))
	}
	p.batch = int32(n)
}

// skip handles a message that is not a row: the ends of batches and of
// the result, the ReadyForQuery that ends the exchange, errors and the
// messages the server sends at any time.
func (p *portal) skip(typ byte, body []byte) error {
	switch typ {
	case 's':
		p.outstanding--
		p.batchEnded()
		if p.window < portalWindow && p.long() {
			p.window = portalWindow
		}
	case 'C':
		p.outstanding--
		if !p.complete {
			// The outstanding Executes, if any, end at once ("SELECT 0");
			// Sync goes after them.
			p.complete = true
			return p.finish()
		}
	case 'Z':
		return p.readyForQuery(body)
	case 'E':
		pe := serverError(body, p.errQuery)
		if endsSession(body) != nil {
			// By the untranslated severity: a server whose messages are
			// in another language translates the other.
			return p.lost(p.sessionEnded(pe))
		}
		if p.serverErr == nil {
			p.serverErr = pe
		}
		// The server skips what follows to the next Sync.
		p.outstanding = 0
		return p.finish()
	case '1', '2', '3', 'n', 'I':
		// ParseComplete, BindComplete, CloseComplete, NoData,
		// EmptyQueryResponse: the replies to the end's own messages.
	case 'D':
		// A row no one reads: the rest of a batch after an early close.
	default:
		if !p.async(typ, body) {
			return p.lost(fmt.Errorf("%w: %q in a portal's result", errProtocol, typ))
		}
	}
	return nil
}

// async handles the messages the server sends at any time, and reports
// whether typ was one: a notice goes to lib/pq's notice handler, as
// lib/pq would pass it; a ParameterStatus or a notification is handed
// back for lib/pq to read (handBack).
func (p *portal) async(typ byte, body []byte) bool {
	switch typ {
	case 'N':
		if h := pq.NoticeHandler(p.conn.inner); h != nil {
			h(serverError(body, ""))
		}
	case 'S', 'A':
		p.notified = p.notified || typ == 'A'
		p.giveBack = append(p.giveBack, typ, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(p.giveBack[len(p.giveBack)-4:], uint32(len(body)+4))
		p.giveBack = append(p.giveBack, body...)
	default:
		return false
	}
	return true
}

// finish sends the Sync that ends the stream, unless one is on its way.
func (p *portal) finish() error {
	if p.finished {
		return nil
	}
	p.finished = true
	if p.pendingZ > 0 {
		return nil // the first batch's Sync: the server ends there
	}
	p.pendingZ++
	p.w.sync()
	if err := p.w.send(); err != nil {
		return p.lost(err)
	}
	if n := p.conn.syncs.Add(1); n <= linkSamplesFirst || n%linkSampleEvery == 0 {
		p.syncSent = time.Now()
	}
	return nil
}

// A connection samples its link's round trip (sampleLink) at its first
// linkSamplesFirst Syncs that end a result read whole, then at one in
// linkSampleEvery: the shortest is soon found, and a clock read costs a
// small query more than the sample is worth.
const (
	linkSamplesFirst = 16
	linkSampleEvery  = 64
)

// readyForQuery ends the exchange when it answers the last Sync of a
// finished stream: the wire is lib/pq's again. Before that, it ends the
// first batch's exchange in a transaction block, and the portal lives on.
func (p *portal) readyForQuery(body []byte) error {
	p.pendingZ--
	if p.pendingZ > 0 || !p.finished {
		return nil
	}
	p.ended = true
	p.conn.portalOpen.Store(false)
	if !p.syncSent.IsZero() {
		p.sampleLink(time.Since(p.syncSent))
	}
	status := p.before
	if len(body) == 1 {
		status = body[0]
	}
	p.handBack(status)
	return nil
}

// handBack leaves the connection to lib/pq as lib/pq would have left it
// after the same query: what the stream read for lib/pq (ParameterStatus,
// notifications) is put before whatever the socket holds for its next
// read, and lib/pq reads it in a round trip of its own (a Ping) when a
// notification is among it, or when the transaction status changed (a
// failed transaction): lib/pq's notification handler then hears of it
// before the stream's end returns, as it would through lib/pq.
func (p *portal) handBack(status byte) {
	s := p.conn.sock
	if left := p.w.leftover(); len(left) > 0 || len(p.giveBack) > 0 {
		s.giveBack(p.giveBack, left)
		p.giveBack = p.giveBack[:0]
	}
	if p.owed {
		// lib/pq reads what was handed back next, in the read that
		// settled the end; the status cannot have changed (mayOwe).
		if status != p.before && p.before != 0 {
			p.conn.discard()
		}
		return
	}
	if status != p.before && p.before != 0 || p.notified {
		p.notified = false
		if pinger, ok := p.conn.inner.(driver.Pinger); ok {
			if pinger.Ping(context.Background()) != nil {
				p.conn.discard()
			}
		}
	}
}

// lost handles an error of the connection itself (a failed read or
// write, a broken reply): nothing more can be read, and the connection is
// never used again.
func (p *portal) lost(err error) error {
	p.ended = true
	p.conn.discard()
	var ended *SessionEndedError
	if errors.As(err, &ended) {
		return err
	}
	if pe := p.conn.sock.frames.fatal.Load(); pe != nil {
		return &SessionEndedError{Server: pe}
	}
	var pe *pq.Error
	if isTimeout(err) || errors.Is(err, errProtocol) || errors.As(err, &pe) {
		// A server's error read on the wire is the server's (payOwed).
		return err
	}
	return fmt.Errorf("%w: %w", driver.ErrBadConn, err)
}

// sessionEnded is the error of a FATAL the server ended the session with.
func (p *portal) sessionEnded(pe *pq.Error) error {
	p.conn.discard()
	return &SessionEndedError{Server: pe}
}

// row decodes a DataRow into dest, as lib/pq does: a row with fewer
// columns than dest fills what it has.
func (p *portal) row(dest []driver.Value, b []byte) error {
	p.rowsIn++
	p.bytesIn += int64(len(b))
	if len(b) < 2 {
		return p.lost(fmt.Errorf("%w: malformed DataRow", errProtocol))
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n < len(dest) {
		dest = dest[:n]
	}
	if len(dest) > len(p.fields) {
		return p.lost(fmt.Errorf("%w: a DataRow with more columns than described", errProtocol))
	}
	loc := p.location()
	for i := range dest {
		if len(b) < 4 {
			return p.lost(fmt.Errorf("%w: malformed DataRow", errProtocol))
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l == -1 {
			dest[i] = nil
			continue
		}
		if l < 0 || int(l) > len(b) {
			return p.lost(fmt.Errorf("%w: malformed DataRow", errProtocol))
		}
		v, err := p.fields[i].decode(loc, b[:l:l])
		if err != nil {
			return err
		}
		if l == 0 && p.byteaEmpty && p.fields[i].oid == oid.T_bytea {
			// An empty bytea in the escape format decodes to nil, as in
			// lib/pq's text results; its binary ones give an empty slice.
			v = []byte{}
		}
		dest[i] = v
		b = b[l:]
	}
	return nil
}

// location is the session's TimeZone as lib/pq tracks it, for timestamptz:
// the one the query started in.
func (p *portal) location() *time.Location {
	c := p.conn
	if tz := p.startTZ; tz != c.locTZ {
		c.locTZ, c.loc = tz, nil
		if tz != nil {
			c.loc = timeZoneLocation(*tz)
		}
	}
	return c.loc
}

// close ends the portal when the stream is closed or fails, with the wire
// held, carrying out the plan of planEnd (end.go). First it reads what is
// in flight up to the next row: when the result ends there, the stream
// was whole (a QueryRow), and its transaction commits as lib/pq's would;
// when the portal is suspended with nothing asked for, one more row is
// asked for to tell. When a row is next, the portal is ended early: a
// read's implicit transaction is rolled back, as a stopped statement is;
// a portal in the caller's transaction, or of a statement that writes
// (which ran whole at its first Execute), is closed; under CloseDrain the
// statement runs to its end instead, as lib/pq's Close reads it. Sync
// ends the exchange, and the connection keeps its session. Under CloseCut
// a read with rows left is cut, as its mode says. dest is unused: rows
// left are skipped, not decoded.
func (p *portal) close(_ []driver.Value) (err error) {
	c := p.conn
	p.mu.Lock()
	bounded := p.bounded
	p.bounded = false
	if p.ended {
		p.mu.Unlock()
		if bounded {
			c.clearDeadline() // a failure's bound on the last read
		}
		return p.takeServerErr()
	}
	p.ending = true
	p.mu.Unlock()
	p.readOff = p.finished && !p.complete && p.serverErr == nil
	// What bounded the reads before is cleared by this end, or the
	// connection is cut.
	// A context that ended is a failure, though database/sql may close
	// the rows before jsonstream's watch fails the stream.
	failed := p.r.state.load() == Failed || p.r.contextErr() != nil
	if portalEnding != nil {
		portalEnding(p)
	}
	if !failed && p.finished && p.pendingZ == 1 && !p.r.cancellable() && p.w.bufferedReady() > 0 {
		// The end's last reply has arrived (a result its first reply
		// held whole, as QueryRow's: bounded.go), and nothing can end
		// the read of it: there is nothing to plan, bound or watch.
		if !c.sock.beginDrain(time.Time{}) {
			return p.cutEnd()
		}
		return p.readRest(false, false)
	}
	plan := planEnd(p.r.endFacts(failed), p.r.settings.drainTimeout)
	// The bound past which a connection that stopped answering is cut;
	// none for an end that must read everything.
	// A failed stream's end is bounded even where a cut would end the
	// caller's transaction: it only meets the bound on a connection that
	// stopped answering.
	var bound time.Duration
	switch {
	case failed:
		bound = max(failedEndTimeout, p.r.settings.drainTimeout)
	case plan.read != readToEnd:
		bound = max(cursorEndTimeout, p.r.settings.drainTimeout)
	}
	// A whole result's end only waits for its Sync's ReadyForQuery (the
	// implicit transaction's commit), which lib/pq waits for without a
	// bound, and so does this: a bound would arm a timer on every small
	// query. An end of the query's context bounds it, as a failure's
	// would: its watch is in the closing phase. Past that bound the
	// connection is cut before the commit's reply came: the result is not
	// whole, and Close returns the context's error. A result found whole
	// only by the reads below waits so too, from then on.
	waitsWhole := func() bool {
		return !p.ended && p.complete && !failed && plan.read == readBounded && (!p.r.cancellable() ||
			p.watch != nil && p.r.txDone() == nil && !p.text.writes)
	}
	wholeAtOnce := waitsWhole()
	var first time.Time // zero: no bound
	switch {
	case wholeAtOnce, !failed && p.finished && p.pendingZ == 1 && p.w.bufferedReady() > 0:
		// Nothing to wait for, or the end's last reply has arrived (a
		// result its first reply held whole: syncWhole): no bound. A
		// failed stream keeps its bound even so: handing the end back
		// may take a round trip of lib/pq's (handBack's Ping), which a
		// network that stopped answering would hold as long as TCP does.
	case plan.read == readLook && !failed:
		first = time.Now() // only what has arrived, within drainGrace
	case bound > 0:
		first = time.Now().Add(bound)
	}
	if !c.sock.beginDrain(first) {
		return p.cutEnd()
	}
	if bound == 0 && !p.text.writes && p.r.cancellable() {
		// An end without a bound (the rest of a read in the caller's
		// transaction, or under CloseDrain) waits for the server, which
		// may take as long as the query: a context that ends meanwhile
		// bounds it then, as a failure does, and Close returns the
		// context's error, as lib/pq's does once its cancel request went
		// out. database/sql's own watch of the context waits for Close.
		// A statement that writes is not bounded: it ran whole, and what
		// is left is reading its result.
		if stop := p.watchEnd(); stop != nil {
			defer func() {
				if stop() {
					return
				}
				// The bound may have come after the end cleared the
				// deadline: cleared again, unless the end cut.
				if !c.isCut() {
					c.clearDeadline()
				}
				if ctxErr := p.r.contextErr(); ctxErr != nil {
					err = ctxErr
				}
			}()
		}
	}
	rowsLeft := false
	if plan.finish && !p.complete && !p.finished {
		p.w.execute(0)
		p.outstanding++
		p.w.sync()
		p.finished = true
		p.pendingZ++
		if err := p.w.send(); err != nil {
			_ = p.lost(err)
			return nil
		}
	}
	var restBytes int
	for !p.ended && !p.complete && !p.finished && !rowsLeft {
		if p.outstanding == 0 {
			n := int32(1)
			if plan.writeRest {
				n = portalWriteRestRows
			}
			p.w.execute(n)
			p.w.flush()
			p.outstanding++
			if err := p.w.send(); err != nil {
				_ = p.lost(err)
				return nil
			}
		}
		typ, body, err := p.read()
		if err != nil {
			return p.endLost(err, failed)
		}
		if typ == 'D' {
			if restBytes += 5 + len(body); plan.writeRest && restBytes <= writeRestBytes {
				continue
			}
			rowsLeft = true
			break
		}
		if err := p.skip(typ, body); err != nil {
			return err
		}
	}
	if rowsLeft && plan.read == readLook {
		return p.cutEnd()
	}
	switch {
	case p.ended:
	case waitsWhole():
		if !wholeAtOnce && !c.sock.beginDrain(time.Time{}) {
			return p.cutEnd()
		}
		if p.watch != nil {
			p.watchFromNow()
			defer func() {
				p.setWatched(false)
				ctxErr := p.r.contextErr()
				switch {
				case ctxErr == nil && !p.watch.ended():
				case !c.isCut():
					c.clearDeadline() // the bound may have come after the end cleared it
				default:
					p.whole = false
					if err == nil {
						err = ctxErr
					}
				}
			}()
		}
	case plan.read == readLook && !p.readOff:
		// The end itself gets the bound of a round trip. A stream whose
		// whole result was asked for sent its end with it: what has not
		// arrived of it within drainGrace is cut, as its rows are.
		if !c.sock.beginDrain(time.Now().Add(bound)) {
			return p.cutEnd()
		}
	}
	if rowsLeft {
		// What already arrived of the batches in flight is read on: with
		// none left in flight, the end cannot fail for the query's sake,
		// and it may be owed (owed.go).
		for p.outstanding > 0 && !p.finished && p.w.buffered() {
			typ, body, err := p.w.next()
			if err != nil {
				return p.endLost(err, failed)
			}
			if err := p.skip(typ, body); err != nil {
				return err
			}
		}
	}
	if rowsLeft && !p.finished {
		w := p.w
		if plan.stmt == stmtRollback {
			// The implicit transaction becomes a block (BEGIN inside it
			// does that, silently) that ROLLBACK ends: a ROLLBACK alone
			// would end it too, with a WARNING in the server's log at
			// every early close.
			for _, stmt := range [...]string{"BEGIN", "ROLLBACK"} {
				w.parse(stmt)
				w.bind("", nil, nil)
				w.execute(0)
			}
		} else {
			w.closePortal()
		}
		unsynced := plan.stmt == stmtRollback && !failed && p.mayOweUnsynced()
		if !unsynced {
			w.sync()
			p.pendingZ++
		}
		p.finished = true
		owe := !failed && p.mayOwe()
		if err := w.send(); err != nil {
			_ = p.lost(err)
			return nil
		}
		switch {
		case unsynced:
			return p.oweUnsynced()
		case owe:
			return p.owe()
		}
	}
	// Rows the end read on were left by the consumer.
	return p.readRest(rowsLeft || restBytes > 0, failed)
}

// readRest reads the rest of an ended portal's replies, up to the
// ReadyForQuery that ends the exchange, for close: the result was whole
// when no row was left (left unset, and none came) and it completed
// without an error. failed says whether the stream failed first.
func (p *portal) readRest(left bool, failed bool) error {
	p.whole = !left
	for !p.ended {
		typ, body, err := p.read()
		if err != nil {
			return p.endLost(err, failed)
		}
		if typ == 'D' {
			p.whole = false
		}
		if err := p.skip(typ, body); err != nil {
			return err
		}
	}
	p.whole = p.whole && p.complete && p.serverErr == nil
	if !p.conn.clearDeadline() {
		return nil
	}
	return p.takeServerErr()
}

// watchEnd watches the query's context and its transaction's while the
// end reads without a bound (close): when one ends, the read gets the
// failed end's bound, then fails. The returned stop reports whether
// neither had ended; nil when neither can.
func (p *portal) watchEnd() (stop func() bool) {
	var stops []func() bool
	for _, ctx := range [...]context.Context{p.r.ctx, p.r.txCtx} {
		if ctx == nil || ctx.Done() == nil || p.watch != nil && ctx == p.watch.ctx {
			continue // the query's watch bounds the end (queryWatch.fire)
		}
		stops = append(stops, context.AfterFunc(ctx, p.boundEnd))
	}
	if len(stops) == 0 && p.watch == nil {
		return nil
	}
	early := p.watchFromNow()
	return func() bool {
		// A watch that runs from now on leaves the socket alone; one that
		// ran has set its bound.
		p.setWatched(false)
		quiet := !early && (p.watch == nil || !p.watch.ended())
		for _, s := range stops {
			quiet = s() && quiet
		}
		return quiet
	}
}

// setWatched sets whether the end's reads, which have no bound of their
// own, are bounded when a context ends (boundEnd).
func (p *portal) setWatched(on bool) {
	p.mu.Lock()
	p.watched = on
	p.mu.Unlock()
}

// watchFromNow bounds the end's reads, which have no bound of their own,
// when a context ends from now on, and at once when one ended before (its
// watch may have run while they were not watched), which it reports.
func (p *portal) watchFromNow() bool {
	p.setWatched(true)
	if p.r.contextErr() != nil {
		p.boundEnd()
		return true
	}
	return false
}

// boundEnd gives the end's read the bound of a failed end, when it has
// none of its own (watched): a context ended.
func (p *portal) boundEnd() {
	p.mu.Lock()
	if p.watched {
		p.conn.sock.interrupt(max(failedEndTimeout, p.r.settings.drainTimeout))
	}
	p.mu.Unlock()
}

// cutEnd ends the stream by cutting the connection.
func (p *portal) cutEnd() error {
	p.conn.cut()
	p.ended = true
	p.whole = false
	return nil
}

// endLost handles a read of the end that failed: past the end's bound
// the connection is cut, as a cut stream's, with nothing to report. The
// result was not received whole.
func (p *portal) endLost(err error, failed bool) error {
	p.whole = false
	err = p.lost(err)
	if isTimeout(err) || failed {
		p.conn.cut()
		return nil
	}
	return err
}

// takeServerErr returns the server's error for the query, once.
func (p *portal) takeServerErr() error {
	err := p.serverErr
	p.serverErr = nil
	return err
}

// Close implements driver.Rows: it ends the portal (close) with the wire
// held.
func (p *portal) Close() error {
	p.wireMu.Lock()
	defer p.wireMu.Unlock()
	return p.close(nil)
}

// ColumnTypeScanType implements driver.RowsColumnTypeScanType.
func (p *portal) ColumnTypeScanType(i int) reflect.Type { return p.fields[i].scanType() }

// ColumnTypeDatabaseTypeName implements
// driver.RowsColumnTypeDatabaseTypeName.
func (p *portal) ColumnTypeDatabaseTypeName(i int) string { return p.fields[i].databaseTypeName() }

// ColumnTypeLength implements driver.RowsColumnTypeLength.
func (p *portal) ColumnTypeLength(i int) (int64, bool) { return p.fields[i].length() }

// ColumnTypePrecisionScale implements driver.RowsColumnTypePrecisionScale.
func (p *portal) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	return p.fields[i].precisionScale()
}

// giveBack puts msgs, then rest, before what the socket holds for lib/pq's
// next read. Both went past the framer already, as they were read.
func (s *sock) giveBack(msgs, rest []byte) {
	held := make([]byte, 0, len(msgs)+len(rest)+len(s.held)-s.heldOff)
	held = append(held, msgs...)
	held = append(held, rest...)
	scanned := len(held) + max(s.heldScanned-s.heldOff, 0)
	held = append(held, s.held[s.heldOff:]...)
	s.held, s.heldOff, s.heldScanned = held, 0, scanned
}
