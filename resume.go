package jsonstream

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

// A stream with a resume key (WithResumeKey) survives the loss of its
// server-side query: on a failure that a new query can get past (a
// recovery conflict on a standby, the session ended by an administrator,
// a crash or a restart, a lost connection), it runs its query again from
// the last key it delivered, on the same connection when that is still
// good, or on a new one from the same connector (whose DSN picks the node:
// several hosts and target_session_attrs), and the rows go on. The key is
// one or more result columns that the query's ORDER BY sorts by, unique
// together; jsonstream checks on every row that its key follows the last
// one strictly in that order, and fails the stream with ErrResumeOrder
// otherwise, so that a continuation can never repeat or skip a row.
//
// The continuation is the query itself, wrapped:
//
//	SELECT * FROM (query) AS jsonstream_resume
//	WHERE (k1, k2) > ($n+1, $n+2) ORDER BY k1, k2
//
// with the original arguments and the last key after them. PostgreSQL
// pushes the condition into the query and starts its index scan at the
// key. The result spans several snapshots: a row changed between the parts
// shows its new values, a row inserted behind the key is not seen. A
// LIMIT, OFFSET or FETCH would count over the rows of a new snapshot, so
// such a query is refused; so is a continuation on a new connection of a
// session that ran SET, RESET or DISCARD.

// KeyColumn is one column of a resume key: a column of the query's
// result, by the name Columns reports, and the direction the query's
// ORDER BY sorts it in.
type KeyColumn struct {
	Name string
	Desc bool
}

// Asc is an ascending key column.
func Asc(name string) KeyColumn { return KeyColumn{Name: name} }

// Desc is a descending key column.
func Desc(name string) KeyColumn { return KeyColumn{Name: name, Desc: true} }

// RetryPolicy bounds how a resumable stream retries its continuation:
// at most Attempts queries after a failure (each on a good connection,
// a new one if need be), waiting Backoff before the second, twice as long
// before each next one up to MaxBackoff, and giving up once Total has
// passed since the failure.
type RetryPolicy struct {
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	Total      time.Duration
}

// DefaultRetryPolicy is the policy of a resumable stream without
// WithResumeRetry: from 10 ms to 1 s apart, for a minute (its 100
// attempts outlast that). A minute outlasts a restart, and a failover
// by pg_auto_failover with its default timings, which promoted the
// secondary about 50 s after the primary died; a manager that takes
// longer needs a longer Total.
var DefaultRetryPolicy = RetryPolicy{Attempts: 100, Backoff: 10 * time.Millisecond, MaxBackoff: time.Second, Total: time.Minute}

// ErrResumeQuery is wrapped by the error of a query that cannot be
// resumed by the key it was given, and nothing of it runs, or, when
// only its columns tell (a key column missing, of a type jsonstream
// cannot order), by the error Query returns after the query started.
var ErrResumeQuery = errors.New("jsonstream: the query cannot be resumed by its key")

// ErrResumeOrder is wrapped by the error that fails a resumable stream
// whose key did not follow the last one strictly in the key's order: the
// query is not ordered by the key, or the key is not unique, or a key
// column was NULL. A continuation could repeat or skip rows, so none is
// made.
var ErrResumeOrder = errors.New("jsonstream: a row's resume key does not follow the last one")

// ResumeError is the error of a resumable stream that gave up: its
// continuation failed Attempts times, or the retry policy's Total passed.
// It wraps the last failure.
type ResumeError struct {
	// Attempts is how many continuations were tried.
	Attempts int
	// Err is the last failure.
	Err error
}

func (e *ResumeError) Error() string {
	return fmt.Sprintf("jsonstream: the stream could not be resumed after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns Err, unless it wraps driver.ErrBadConn: database/sql
// would then run a query that gave up at its start again, and its retries
// with it.
func (e *ResumeError) Unwrap() error {
	if errors.Is(e.Err, driver.ErrBadConn) {
		return nil
	}
	return e.Err
}

// WithResumeKey makes a stream resumable by the given key (see KeyColumn):
// the columns its query's ORDER BY sorts by, in that order, unique
// together and never NULL, of a type whose order jsonstream checks
// (integers, numeric, floats, uuid, bytea, dates and timestamps, bool; not
// text, whose order is a collation's). It takes one statement that reads
// (SELECT, VALUES, TABLE, WITH) without LIMIT, OFFSET or FETCH, run
// outside a transaction; otherwise the query fails with an error wrapping
// ErrResumeQuery. An option for a Stream or
// a context (ContextWithOptions): on a connector every query would need
// the key.
func WithResumeKey(cols ...KeyColumn) Option {
	return func(s *settings) error {
		if len(cols) == 0 {
			return invalid("WithResumeKey", cols, "no column")
		}
		seen := map[string]bool{}
		for _, c := range cols {
			if c.Name == "" || seen[c.Name] {
				return invalid("WithResumeKey", cols, "a column without a name, or twice")
			}
			seen[c.Name] = true
		}
		if s.resume == nil {
			s.resume = &resumeSettings{policy: DefaultRetryPolicy}
		}
		s.resume.key = append([]KeyColumn(nil), cols...)
		return nil
	}
}

// WithResumeRetry sets the retry policy of a resumable stream; the
// default is DefaultRetryPolicy.
func WithResumeRetry(p RetryPolicy) Option {
	return func(s *settings) error {
		if p.Attempts < 1 || p.Backoff < 0 || p.MaxBackoff < p.Backoff || p.Total <= 0 {
			return invalid("WithResumeRetry", p, "Attempts must be at least 1, Backoff at most MaxBackoff, Total positive")
		}
		if s.resume == nil {
			s.resume = &resumeSettings{policy: DefaultRetryPolicy}
		}
		s.resume.policy = p
		return nil
	}
}

// resumeSettings are a stream's WithResumeKey, WithResumeRetry and
// WithResumeAfterPause.
type resumeSettings struct {
	key        []KeyColumn
	policy     RetryPolicy
	afterPause time.Duration
}

// resumeRefusal says why the query cannot be resumed, or "".
func (c *conn) resumeRefusal(text queryText) string {
	if c.sock == nil || !c.wireOK {
		return "jsonstream does not own this connection's wire (open it with sql.Open(\"jsonstream\", dsn) or NewConnectorConfig)"
	}
	inBlock, _ := c.sock.frames.txBlock()
	switch {
	case c.inTx || inBlock:
		return "it runs inside a transaction, which a continuation on another connection could not continue"
	case !text.certain || text.malformed || text.statements != 1:
		return "it must be exactly one statement"
	case text.writes:
		return "it may change data"
	case text.limited:
		return "it has a LIMIT, OFFSET or FETCH, which a continuation in a new snapshot would count over other rows"
	}
	if oneOf(text.first, resumeFirstWords) {
		return ""
	}
	return "it is not a query"
}

// resumeFirstWords are the first keywords of the queries a resumable
// stream runs.
var resumeFirstWords = []string{"select", "values", "table", "with", "("}

// keyKind is how a key column's values are ordered and passed back.
type keyKind int

const (
	keyInt keyKind = iota
	keyFloat
	keyNumeric
	keyUUID // its text form, byte by byte
	keyBytes
	keyTime
	keyBool
)

// keyKindOf maps a column's type name to its keyKind.
func keyKindOf(typ string) (keyKind, bool) {
	switch typ {
	case "INT2", "INT4", "INT8":
		return keyInt, true
	case "FLOAT4", "FLOAT8":
		return keyFloat, true
	case "NUMERIC":
		return keyNumeric, true
	case "UUID":
		return keyUUID, true
	case "BYTEA":
		return keyBytes, true
	case "DATE", "TIMESTAMP", "TIMESTAMPTZ":
		return keyTime, true
	case "BOOL":
		return keyBool, true
	}
	return 0, false
}

// resumeRows is the driver.Rows of a resumable stream: the rows of the
// query, then of each continuation.
type resumeRows struct {
	cur    *rows
	ctx    context.Context
	query  string // the first statement, without its semicolon
	args   []driver.NamedValue
	stream *Stream
	set    resumeSettings
	// base is the connection database/sql gave the query; own is one the
	// stream opened for a continuation, closed with it.
	base, own *conn
	// idx, kinds and types describe the key columns; last is the key of
	// the last row delivered, once have is set.
	idx   []int
	kinds []keyKind
	types []string
	last  []driver.Value
	have  bool
	// since is when the stream failed, until the continuation's first row.
	since time.Time
	cause error

	// mu guards what the Stream's controls find while a continuation is
	// being made (retrying): a Cancel sets endErr and closes stop, a
	// Pause sets pausing, a Resume clears it.
	mu                sync.Mutex
	retrying, pausing bool
	stop              chan struct{}
	// endErr is what ended the stream while the controls came here: a
	// Cancel (ErrCanceled), or the timeout of a pause held here
	// (ErrPauseTimeout). The Stream is Failed from then on, though Next
	// has not seen it yet.
	endErr error
	// wake is closed by the Resume that ends a pause held here; pausedAt
	// is when that pause began, heldAt when it came here, and expiry its
	// pause timeout's timer, of hold number holds (release.go).
	wake     chan struct{}
	pausedAt time.Time
	heldAt   time.Time
	expiry   *time.Timer
	holds    uint64
	// stopCtx is the query's context, canceled by a Cancel: a connect
	// waits in it.
	stopCtx    context.Context
	stopCancel context.CancelFunc
}

var (
	_ driver.Rows                           = (*resumeRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*resumeRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*resumeRows)(nil)
	_ driver.RowsColumnTypeLength           = (*resumeRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*resumeRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*resumeRows)(nil)
	_ Controller                            = (*resumeRows)(nil)
)

// closeUnstarted closes rows that bind refused: rows whose start was held
// (holdStart) end without an event, as a Query that fails fires none.
func (r *rows) closeUnstarted() {
	if r.holdStart {
		r.endUnobserved()
	}
	_ = r.Close()
}

// bind finds the key columns among the columns of the rows being read,
// and closes them when one is missing or of a type jsonstream cannot
// order.
func (rr *resumeRows) bind() error {
	r := rr.cur
	cols := r.Columns()
	for _, k := range rr.set.key {
		i := indexOf(cols, k.Name)
		if i < 0 {
			r.closeUnstarted()
			return fmt.Errorf("%w: key column %q is not among the result's columns %q", ErrResumeQuery, k.Name, cols)
		}
		typ := r.ColumnTypeDatabaseTypeName(i)
		kind, ok := keyKindOf(typ)
		if !ok {
			r.closeUnstarted()
			why := "which jsonstream cannot order"
			switch typ {
			case "TEXT", "VARCHAR", "BPCHAR", "NAME", "CHAR":
				why = "whose order is a collation's, which jsonstream cannot check (convert_to(column, 'UTF8') is a bytea key in byte order)"
			}
			return fmt.Errorf("%w: key column %q is of type %s, %s", ErrResumeQuery, k.Name, typ, why)
		}
		rr.idx = append(rr.idx, i)
		rr.kinds = append(rr.kinds, kind)
		rr.types = append(rr.types, strings.ToLower(typ))
	}
	rr.last = make([]driver.Value, len(rr.idx))
	return nil
}

func indexOf(cols []string, name string) int {
	for i, c := range cols {
		if c == name {
			return i
		}
	}
	return -1
}

// Columns implements driver.Rows.
func (rr *resumeRows) Columns() []string { return rr.cur.Columns() }

// Next implements driver.Rows: a row whose key does not follow the last
// fails the stream; a failure a continuation can get past starts one.
func (rr *resumeRows) Next(dest []driver.Value) error {
	for {
		err := rr.cur.Next(dest)
		if err == nil {
			return rr.delivered(dest)
		}
		if errors.Is(err, ErrPauseReleased) {
			// Paused long enough to let the server go (release.go).
			if err := rr.waitReleased(); err != nil {
				return err
			}
		} else if err == io.EOF || !retryable(err) { //nolint:errorlint // io.EOF itself, as database/sql compares
			return err
		}
		if err := rr.resume(err); err != nil {
			return err
		}
	}
}

// delivered checks the key of the row in dest and keeps it.
func (rr *resumeRows) delivered(dest []driver.Value) error {
	for j, i := range rr.idx {
		if dest[i] == nil {
			return rr.disorder(fmt.Errorf("%w: key column %q is NULL", ErrResumeOrder, rr.set.key[j].Name))
		}
	}
	if rr.have {
		cmp := 0
		for j, i := range rr.idx {
			c, err := compareKey(rr.kinds[j], rr.last[j], dest[i])
			if err != nil {
				return rr.disorder(fmt.Errorf("%w: key column %q: %w", ErrResumeOrder, rr.set.key[j].Name, err))
			}
			if rr.set.key[j].Desc {
				c = -c
			}
			if c != 0 {
				cmp = c
				break
			}
		}
		if cmp >= 0 {
			return rr.disorder(fmt.Errorf("%w: row %d's key %v after %v: the query is not ordered by the key (%v), or the key is not unique",
				ErrResumeOrder, rr.cur.rowCount.Load()+rr.cur.priorRows, rr.keyOf(dest), rr.last, rr.set.key))
		}
	}
	for j, i := range rr.idx {
		rr.last[j] = keep(dest[i], rr.last[j])
	}
	rr.have = true
	if !rr.since.IsZero() {
		rr.cur.observeContinued(rr.cause, time.Since(rr.since))
		rr.since, rr.cause = time.Time{}, nil
	}
	return nil
}

func (rr *resumeRows) keyOf(dest []driver.Value) []driver.Value {
	k := make([]driver.Value, len(rr.idx))
	for j, i := range rr.idx {
		k[j] = dest[i]
	}
	return k
}

// disorder fails the stream with err.
func (rr *resumeRows) disorder(err error) error {
	rr.cur.fail(err, true)
	return err
}

// keep copies v, reusing old's bytes: the driver's []byte are only
// valid until the next Next.
func keep(v, old driver.Value) driver.Value {
	if b, ok := v.([]byte); ok {
		buf, _ := old.([]byte)
		return append(buf[:0], b...)
	}
	return v
}

// resume runs the continuation after the failure cause, within the retry
// policy. Meanwhile the Stream's Cancel, Pause and Resume come here
// (control): a Cancel ends the retries with ErrCanceled, a Pause is
// carried over to the continuation.
func (rr *resumeRows) resume(cause error) (err error) {
	if rr.since.IsZero() {
		rr.since, rr.cause = time.Now(), cause
	}
	old := rr.cur
	prior := old.rowCount.Load() + old.priorRows
	bytes := old.byteCount.Load() + old.priorBytes
	resumes := old.resumes + 1
	started := old.inner != nil // not when the query failed at once
	rr.mu.Lock()
	if !rr.retrying { // a released pause holds the controls already
		rr.retry()
	}
	stopCancel := rr.stopCancel
	rr.mu.Unlock()
	defer stopCancel()
	defer func() {
		if err != nil {
			rr.mu.Lock()
			rr.retrying = false
			rr.mu.Unlock()
			if started {
				old.observeGaveUp(err)
			}
		}
	}()
	if started {
		// To an Observer the stream goes on: the failed part ends
		// without EventEnded, the continuation starts without
		// EventStarted.
		old.endUnobserved()
		_ = old.Close()
	}
	p := rr.set.policy
	deadline := rr.since.Add(p.Total)
	wait := p.Backoff
	for attempt := 1; ; attempt++ {
		r, err := rr.continuation(prior, resumes, started || old.continues, deadline)
		if err == nil {
			r.priorBytes = bytes
			r.pauseTimeout.Store(old.pauseTimeout.Load())
			rr.takeOver(r)
			return nil
		}
		select {
		case <-rr.stop:
			return ErrCanceled
		default:
		}
		if !retryable(err) {
			return err
		}
		if attempt >= p.Attempts || time.Until(deadline) < wait {
			return &ResumeError{Attempts: attempt, Err: err}
		}
		t := time.NewTimer(wait)
		select {
		case <-rr.ctx.Done():
			t.Stop()
			return rr.ctx.Err()
		case <-rr.stop:
			t.Stop()
			return ErrCanceled
		case <-t.C:
		}
		wait = min(2*wait, p.MaxBackoff)
	}
}

// takeOver makes r, a continuation no one else sees yet, the rows being
// read, paused if the Stream was paused meanwhile and canceled if it was
// canceled. The pause is applied while the controls still come here, so
// that a Resume cannot go to r before it.
func (rr *resumeRows) takeOver(r *rows) {
	paused := false
	for {
		rr.mu.Lock()
		want, canceled := rr.pausing, rr.endErr != nil
		if want == paused || canceled {
			rr.retrying = false
			rr.cur = r
			if rr.stream != nil {
				rr.stream.bound.Store(r)
			}
			rr.mu.Unlock()
			if canceled {
				_ = r.Cancel()
			}
			return
		}
		rr.mu.Unlock()
		// Outside the lock: an Observer may call the Stream.
		if want {
			_ = r.pauseNow()
		} else {
			_ = r.resumeNow()
		}
		paused = want
	}
}

// retry starts taking the Stream's controls; called with mu held.
func (rr *resumeRows) retry() {
	rr.retrying, rr.endErr, rr.pausing = true, nil, false
	rr.stop = make(chan struct{})
	rr.stopCtx, rr.stopCancel = context.WithCancel(rr.ctx)
}

// control handles a Controller call that comes while a continuation is
// being made, and reports whether it did, with the call's error: a stream
// that a Cancel or a held pause's timeout ended takes no more calls, as a
// Failed one does not.
func (rr *resumeRows) control(call func()) (bool, error) {
	if rr == nil {
		return false, nil
	}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if !rr.retrying {
		return false, nil
	}
	if rr.endErr != nil {
		return true, ended(Failed)
	}
	call()
	return true, nil
}

// controlState is the State the Stream shows while the controls come
// here, and false when they do not.
func (rr *resumeRows) controlState() (State, bool) {
	if rr == nil {
		return 0, false
	}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	switch {
	case !rr.retrying:
		return 0, false
	case rr.endErr != nil:
		return Failed, true
	case rr.pausing:
		return Paused, true
	}
	return Running, true
}

// continuation runs the query from the last key on a good connection:
// the last one used while it is, a new one from the connector otherwise,
// connecting until deadline at most.
func (rr *resumeRows) continuation(prior, resumes int64, continues bool, deadline time.Time) (*rows, error) {
	select {
	case <-rr.stop:
		return nil, ErrCanceled
	default:
	}
	c := rr.own
	if c == nil {
		c = rr.base
	}
	defer c.leave()
	if c.usable() != nil || !c.portalReady() {
		rr.closeOwn()
		switch {
		case rr.base.connector == nil:
			return nil, fmt.Errorf("%w: the connection was lost and it has no connector to open another", driver.ErrBadConn)
		case rr.base.sessionSet:
			return nil, fmt.Errorf("%w: the connection was lost, and a new session would not have what this one was set to (SET, RESET or DISCARD ran on it)", ErrResumeQuery)
		}
		ctx, cancel := context.WithDeadline(rr.stopCtx, deadline)
		dc, err := rr.base.connector.Connect(ctx)
		cancel()
		if err != nil {
			return nil, connectError{err}
		}
		rr.own = dc.(*conn)
		c = rr.own
	}
	query, args := rr.query, rr.args
	if rr.have {
		query, args = rr.continued()
	}
	set := rr.cur.settings
	set.resume = nil
	r := allocRows(set)
	r.priorRows, r.resumes, r.continues, r.resumer, r.streamQuery = prior, resumes, continues, rr, rr.query
	dr, err := c.queryAs(rr.ctx, query, args, r)
	if err != nil {
		return nil, err
	}
	if rr.cur.inner != nil {
		if got, want := dr.Columns(), rr.cur.Columns(); !equalStrings(got, want) {
			r.endUnobserved() // the stream's end is its own
			_ = dr.Close()
			return nil, fmt.Errorf("%w: the continuation's columns %q are not the query's %q", ErrResumeQuery, got, want)
		}
	}
	return r, nil
}

// closeOwn closes the connection the stream opened, if any.
func (rr *resumeRows) closeOwn() {
	if rr.own != nil {
		_ = rr.own.Close()
		rr.own = nil
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// continued builds the continuation of the query after the last key
// (see the top of the file) and its arguments.
func (rr *resumeRows) continued() (string, []driver.NamedValue) {
	var b strings.Builder
	b.WriteString("SELECT * FROM (\n")
	b.WriteString(rr.query)
	b.WriteString("\n) AS jsonstream_resume WHERE ")
	args := append([]driver.NamedValue(nil), rr.args...)
	param := make([]string, len(rr.idx))
	for j := range rr.idx {
		args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: keyArg(rr.kinds[j], rr.last[j])})
		param[j] = "$" + strconv.Itoa(len(args)) + "::" + rr.types[j]
	}
	key := rr.set.key
	same := true
	for _, k := range key {
		same = same && k.Desc == key[0].Desc
	}
	op := func(k KeyColumn) string {
		if k.Desc {
			return " < "
		}
		return " > "
	}
	if same {
		b.WriteByte('(')
		for j, k := range key {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(quoteIdent(k.Name))
		}
		b.WriteString(")" + op(key[0]) + "(")
		b.WriteString(strings.Join(param, ", "))
		b.WriteByte(')')
	} else {
		// (k1 > $a) OR (k1 = $a AND k2 < $b) OR …
		for j := range key {
			if j > 0 {
				b.WriteString(" OR ")
			}
			b.WriteByte('(')
			for i := 0; i < j; i++ {
				b.WriteString(quoteIdent(key[i].Name) + " = " + param[i] + " AND ")
			}
			b.WriteString(quoteIdent(key[j].Name) + op(key[j]) + param[j] + ")")
		}
	}
	b.WriteString(" ORDER BY ")
	for j, k := range key {
		if j > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteIdent(k.Name))
		if k.Desc {
			b.WriteString(" DESC")
		}
	}
	return b.String(), args
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// keyArg is a kept key value as an argument: text for the types lib/pq
// returns as bytes but a bytea, which it would send as one.
func keyArg(kind keyKind, v driver.Value) driver.Value {
	if b, ok := v.([]byte); ok && kind != keyBytes {
		return string(b)
	}
	return v
}

// compareKey compares two values of a key column.
func compareKey(kind keyKind, a, b driver.Value) (int, error) {
	switch kind {
	case keyInt:
		x, ok1 := a.(int64)
		y, ok2 := b.(int64)
		if ok1 && ok2 {
			return cmpOrdered(x, y), nil
		}
	case keyFloat:
		x, ok1 := a.(float64)
		y, ok2 := b.(float64)
		if ok1 && ok2 && x == x && y == y { // NaN has no order here
			return cmpOrdered(x, y), nil
		}
	case keyNumeric:
		return compareNumeric(asText(a), asText(b))
	case keyUUID, keyBytes:
		return bytes.Compare([]byte(asText(a)), []byte(asText(b))), nil
	case keyTime:
		x, ok1 := a.(time.Time)
		y, ok2 := b.(time.Time)
		if ok1 && ok2 {
			return x.Compare(y), nil
		}
	case keyBool:
		x, ok1 := a.(bool)
		y, ok2 := b.(bool)
		if ok1 && ok2 {
			switch {
			case x == y:
				return 0, nil
			case y:
				return -1, nil
			}
			return 1, nil
		}
	}
	return 0, fmt.Errorf("cannot compare %T %v with %T %v", a, a, b, b)
}

func cmpOrdered[T int64 | float64](x, y T) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func asText(v driver.Value) string {
	switch v := v.(type) {
	case []byte:
		return string(v)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

// compareNumeric compares two numeric values in PostgreSQL's text form
// ("-12.50", "NaN", "Infinity"), as PostgreSQL orders them: NaN above
// everything, then Infinity.
func compareNumeric(a, b string) (int, error) {
	ra, err := numericRank(a)
	if err != nil {
		return 0, err
	}
	rb, err := numericRank(b)
	if err != nil {
		return 0, err
	}
	if ra != 0 || rb != 0 {
		return cmpOrdered(int64(ra), int64(rb)), nil
	}
	negA, negB := strings.HasPrefix(a, "-"), strings.HasPrefix(b, "-")
	if negA != negB {
		if negA {
			return -1, nil
		}
		return 1, nil
	}
	c := compareAbs(strings.TrimPrefix(a, "-"), strings.TrimPrefix(b, "-"))
	if negA {
		c = -c
	}
	return c, nil
}

// numericRank places the special values: -2 for -Infinity, 2 for
// Infinity, 3 for NaN, 0 for a number.
func numericRank(s string) (int, error) {
	switch s {
	case "NaN":
		return 3, nil
	case "Infinity":
		return 2, nil
	case "-Infinity":
		return -2, nil
	}
	t := strings.TrimPrefix(s, "-")
	if t == "" || strings.Count(t, ".") > 1 || strings.Trim(t, "0123456789.") != "" {
		return 0, fmt.Errorf("not a numeric value: %q", s)
	}
	return 0, nil
}

// compareAbs compares two unsigned decimals.
func compareAbs(a, b string) int {
	ia, fa, _ := strings.Cut(a, ".")
	ib, fb, _ := strings.Cut(b, ".")
	ia, ib = strings.TrimLeft(ia, "0"), strings.TrimLeft(ib, "0")
	if len(ia) != len(ib) {
		return cmpOrdered(int64(len(ia)), int64(len(ib)))
	}
	if c := strings.Compare(ia, ib); c != 0 {
		return c
	}
	fa, fb = strings.TrimRight(fa, "0"), strings.TrimRight(fb, "0")
	return strings.Compare(fa, fb)
}

// connectError is a failure to open a connection for a continuation:
// retried, as a node may be down or not yet promoted, unless the server
// refused the login itself (a password, a database that is not there).
type connectError struct{ err error }

func (e connectError) Error() string { return e.err.Error() }
func (e connectError) Unwrap() error { return e.err }

// retryable reports whether a continuation can get past err: the
// session or the connection was lost, or the server canceled the query
// for a conflict with recovery on a standby. Endings of jsonstream's own
// (Cancel, the pause timeout, a context) and every other server error
// are not.
func retryable(err error) bool {
	if errors.Is(err, ErrCanceled) || errors.Is(err, ErrPauseTimeout) || errors.Is(err, ErrResumeOrder) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pe *pq.Error
	var ce connectError
	if errors.As(err, &ce) {
		return !errors.As(err, &pe) || pe.Code.Class() != "28" && pe.Code.Class() != "3D"
	}
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "57P01", "57P02", "57P03", "08000", "08003", "08006":
			return true
		}
		return false
	}
	var ended *SessionEndedError
	var netErr net.Error
	return errors.As(err, &ended) || errors.Is(err, driver.ErrBadConn) || errors.As(err, &netErr) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// Close implements driver.Rows, and closes the connection the stream
// opened for a continuation.
func (rr *resumeRows) Close() error {
	rr.mu.Lock()
	if rr.retrying {
		// Closed in a pause that let the query go, before a continuation:
		// the early close of a paused stream, which the release carried
		// out already; or, when database/sql closes the rows for it, the
		// end of the query's context.
		if rr.endErr != nil {
			// A Cancel or the pause timeout ended it first: that is how
			// it ended.
			rr.cur.failure.Store(&rr.endErr)
		}
		rr.cur.closedReleased.Store(errors.Is(rr.cur.err(), ErrPauseReleased) && rr.cur.contextErr() == nil)
		rr.endControls()
	}
	rr.mu.Unlock()
	err := rr.cur.Close()
	if rr.own != nil {
		err = errors.Join(err, rr.own.Close())
		rr.own = nil
	}
	return err
}

// cancelRetry, pauseRetry and resumeRetry are the Stream's controls while
// a continuation is being made; called with mu held.
func (rr *resumeRows) cancelRetry() { rr.endWith(ErrCanceled) }

// endWith ends the stream with err while the controls come here (a
// Cancel, a held pause's timeout): whatever waits in stop stops.
func (rr *resumeRows) endWith(err error) {
	if rr.endErr == nil {
		rr.endErr = err
		close(rr.stop)
		rr.stopCancel()
		rr.stopExpiry()
	}
}

func (rr *resumeRows) pauseRetry() {
	if !rr.pausing {
		rr.pausing = true
		rr.wake = make(chan struct{})
	}
}

func (rr *resumeRows) resumeRetry() {
	if rr.pausing {
		rr.pausing, rr.heldAt = false, time.Time{}
		rr.stopExpiry()
		if rr.wake != nil {
			close(rr.wake)
			rr.wake = nil
		}
	}
}

// The column type methods and the Controller's go to the rows being read.

func (rr *resumeRows) ColumnTypeScanType(i int) reflect.Type { return rr.cur.ColumnTypeScanType(i) }

func (rr *resumeRows) ColumnTypeDatabaseTypeName(i int) string {
	return rr.cur.ColumnTypeDatabaseTypeName(i)
}

func (rr *resumeRows) ColumnTypeLength(i int) (int64, bool) { return rr.cur.ColumnTypeLength(i) }

func (rr *resumeRows) ColumnTypeNullable(i int) (bool, bool) { return rr.cur.ColumnTypeNullable(i) }

func (rr *resumeRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	return rr.cur.ColumnTypePrecisionScale(i)
}

// Pause implements Controller.
func (rr *resumeRows) Pause() error { return rr.cur.Pause() }

// Resume implements Controller.
func (rr *resumeRows) Resume() error { return rr.cur.Resume() }

// Cancel implements Controller.
func (rr *resumeRows) Cancel() error { return rr.cur.Cancel() }

// SetPauseTimeout implements Controller.
func (rr *resumeRows) SetPauseTimeout(d time.Duration) error { return rr.cur.SetPauseTimeout(d) }

// State implements Controller.
func (rr *resumeRows) State() State { return rr.cur.State() }

// Stats implements Controller.
func (rr *resumeRows) Stats() Stats { return rr.cur.Stats() }
