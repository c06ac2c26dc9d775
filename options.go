package jsonstream

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidOption is wrapped by every error about a bad option or DSN
// parameter; the message names the option and the value.
var ErrInvalidOption = errors.New("jsonstream: invalid option")

// PauseTimeoutAction says what a stream does when it stays paused longer
// than its pause timeout.
type PauseTimeoutAction uint8

const (
	// FailOnPauseTimeout ends the stream: Next returns ErrPauseTimeout, the
	// server-side query is stopped and the connection is not reused.
	FailOnPauseTimeout PauseTimeoutAction = iota
	// ResumeOnPauseTimeout resumes the stream as if Resume had been called.
	ResumeOnPauseTimeout
)

// String returns "fail" or "resume", the DSN spelling of the action.
func (a PauseTimeoutAction) String() string {
	switch a {
	case FailOnPauseTimeout:
		return "fail"
	case ResumeOnPauseTimeout:
		return "resume"
	}
	return fmt.Sprintf("PauseTimeoutAction(%d)", uint8(a))
}

// CloseMode says how Close ends a stream that has rows left. lib/pq reads
// every remaining row on Close; stopping early instead costs the
// connection, which database/sql then replaces with a new one.
//
// Whatever the mode, Close never cuts a statement that may write: only one
// whose text is a read (its first keyword SELECT, VALUES, TABLE, WITH or
// SHOW, with no INSERT, UPDATE, DELETE or MERGE in it and no SELECT …
// INTO) is stopped early; any other is read to its end, as lib/pq does,
// so that it commits what it commits through lib/pq. A SELECT that calls
// a function that writes looks like a read, and is stopped with what the
// function wrote: give it CloseDrain.
//
// Inside a transaction, Close always drains: cutting the connection
// would end the transaction. That is one begun with BeginTx, or with
// Exec("BEGIN") on a sql.Conn, which jsonstream knows of from the
// server's ReadyForQuery (on connections it follows: see
// NewConnectorConfig). A session kept with sql.Conn
// loses its state (temporary tables, SET, advisory locks, LISTEN) when its
// connection is cut: use CloseDrain there if that state matters, or a
// cursor-backed stream (WithFetchSize).
//
// A cursor-backed stream's Close never has more than one batch to read
// off: it reads it within the drain timeout under CloseAuto (and cuts the
// connection if it takes longer), whatever it takes under CloseDrain and
// inside any transaction, and under CloseCut only what has arrived,
// cutting when more of the batch is on its way. It then closes the cursor
// (rolling back the transaction jsonstream began for it) and keeps the
// connection. How each ending is decided: end.go's planEnd.
type CloseMode uint8

const (
	// CloseAuto drains the rest of the result when it arrives within the
	// drain timeout (a QueryRow, a small remainder: the connection is kept)
	// and otherwise cuts the connection, which stops the server-side query.
	CloseAuto CloseMode = iota
	// CloseCut cuts the connection whenever rows are left, without trying
	// to drain: it looks only at what has arrived (waiting at most
	// drainGrace, 5 ms), so a result received whole, such as QueryRow's
	// or any whose end already reached the client, keeps the connection,
	// and every other early close discards it. It sends no cancel request:
	// closing the connection stops the server.
	CloseCut
	// CloseDrain reads the whole remainder, as lib/pq does: the connection
	// is kept, and Close takes as long as the server needs to send the rest.
	CloseDrain
)

// CloseCancel is CloseCut, under its former name; the DSN value cancel
// still means cut.
//
// Deprecated: it sends no cancel request. Use CloseCut, named for what it
// does.
const CloseCancel = CloseCut

// String returns "auto", "cut" or "drain", the DSN spelling of the mode.
func (m CloseMode) String() string {
	switch m {
	case CloseAuto:
		return "auto"
	case CloseCut:
		return "cut"
	case CloseDrain:
		return "drain"
	}
	return fmt.Sprintf("CloseMode(%d)", uint8(m))
}

// DefaultDrainTimeout is how long CloseAuto drains before it cuts the
// connection. Measured on loopback (BenchmarkCloseCosts): a query that has
// to open a new connection costs about 20 ms, lib/pq drains about 3,000
// rows of 110 bytes per millisecond. Five milliseconds keeps any Close
// short and keeps the connection whenever the rest is below about 1.5 MB.
const DefaultDrainTimeout = 5 * time.Millisecond

// settings is what options configure. A connector holds the defaults; a
// stream copies them and applies its own options on top.
type settings struct {
	pauseTimeout   time.Duration // 0: no timeout
	onPauseTimeout PauseTimeoutAction
	closeMode      CloseMode
	drainTimeout   time.Duration
	fetchSize      int // 0: single statement; FetchAuto or n > 0: cursor
	// mode is the stream mode WithStreamMode chose; modeSet is unset
	// while none was, and chooseMode decides (mode.go).
	mode         StreamMode
	modeSet      bool
	observer     Observer // nil: no events
	observeQuery bool
	// resume is set by WithResumeKey or WithResumeRetry (resume.go).
	resume *resumeSettings
}

func defaultSettings() settings {
	return settings{drainTimeout: DefaultDrainTimeout}
}

// Option configures a Connector, a Driver or one Stream. Options are
// checked when applied: a bad value makes the constructor return an error
// wrapping ErrInvalidOption.
type Option func(*settings) error

func invalid(name string, value any, why string) error {
	return fmt.Errorf("%w: %s(%v): %s", ErrInvalidOption, name, value, why)
}

// WithPauseTimeout bounds how long a stream may stay paused; 0, the
// default, means no bound. What happens on expiry is set by
// WithPauseTimeoutAction.
func WithPauseTimeout(d time.Duration) Option {
	return func(s *settings) error {
		if d < 0 {
			return invalid("WithPauseTimeout", d, "negative duration")
		}
		s.pauseTimeout = d
		return nil
	}
}

// WithPauseTimeoutAction sets what a stream does when its pause timeout
// expires; the default is FailOnPauseTimeout.
func WithPauseTimeoutAction(a PauseTimeoutAction) Option {
	return func(s *settings) error {
		if a > ResumeOnPauseTimeout {
			return invalid("WithPauseTimeoutAction", a, "unknown action")
		}
		s.onPauseTimeout = a
		return nil
	}
}

// WithCloseMode sets how Close ends a stream that has rows left; the
// default is CloseAuto.
func WithCloseMode(m CloseMode) Option {
	return func(s *settings) error {
		if m > CloseDrain {
			return invalid("WithCloseMode", m, "unknown mode")
		}
		s.closeMode = m
		return nil
	}
}

// WithDrainTimeout sets how long CloseAuto may drain the rest of a result
// before it cuts the connection; the default is DefaultDrainTimeout.
func WithDrainTimeout(d time.Duration) Option {
	return func(s *settings) error {
		if d <= 0 {
			return invalid("WithDrainTimeout", d, "must be positive")
		}
		s.drainTimeout = d
		return nil
	}
}

// FetchAuto makes WithFetchSize fetch from a cursor in batches that adapt
// to the rows.
const FetchAuto = -1

// MaxFetchSize is the largest batch size WithFetchSize takes: FETCH's
// count is a 32-bit integer.
const MaxFetchSize = 1<<31 - 1

const fetchSizeRange = "want 0, a batch size from 1 to 2147483647 (MaxFetchSize), or FetchAuto (DSN: auto)"

// WithFetchSize chooses how a query's rows come from the server. 0, the
// default, sends the query as one statement and streams its whole result.
// n > 0 runs it as a cursor, DECLARE … NO SCROLL CURSOR FOR (query), and
// FETCHes n rows per batch until a batch comes back short. FetchAuto
// starts with batches of 16 rows, so that a QueryRow or an early close
// costs almost nothing, and doubles them up to 8,192 rows and about 256
// KiB of values, so that reading off the rest of a batch stays well under
// a millisecond on loopback while a long stream makes few round trips.
//
// Outside a transaction jsonstream begins one for the cursor, commits it
// after a complete stream and rolls it back after an early close or a
// failure, as a stopped statement would be. Inside a transaction (begun
// with BeginTx, or with Exec("BEGIN"), which jsonstream detects) it uses
// that transaction and never ends it. A cursor-backed stream stops early
// without losing its connection: Close, Cancel, the pause timeout and the
// query's context close the cursor instead of cutting the connection.
//
// DECLARE takes one SELECT, VALUES, TABLE or WITH query: see
// ErrCursorQuery for what happens to any other. A batch size above
// MaxFetchSize, the largest count FETCH takes, or any other value of n is
// an error wrapping ErrInvalidOption.
func WithFetchSize(n int) Option {
	return func(s *settings) error {
		if n < 0 && n != FetchAuto || n > MaxFetchSize {
			return invalid("WithFetchSize", n, fetchSizeRange)
		}
		s.fetchSize = n
		return nil
	}
}

func (s *settings) apply(opts []Option) error {
	for _, o := range opts {
		if o == nil {
			return fmt.Errorf("%w: nil Option", ErrInvalidOption)
		}
		if err := o(s); err != nil {
			return err
		}
	}
	return nil
}

// DSNPrefix starts every DSN parameter that jsonstream reads. Such
// parameters are removed before the DSN reaches the inner driver:
//
//	jsonstream_pause_timeout=30s       WithPauseTimeout (a Go duration)
//	jsonstream_on_pause_timeout=resume WithPauseTimeoutAction: fail or resume
//	jsonstream_close=drain             WithCloseMode: auto, cut or drain
//	jsonstream_drain_timeout=5ms       WithDrainTimeout
//	jsonstream_fetch_size=auto         WithFetchSize: 0, a batch size, or auto
//	jsonstream_mode=portal             WithStreamMode: auto, single, cursor or portal
//
// Any other parameter with the prefix is an error.
const DSNPrefix = "jsonstream_"

// dsnOption turns one DSN parameter into its Option.
func dsnOption(name, value string) (Option, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w: DSN parameter %s=%q: %s", ErrInvalidOption, name, value, why)
	}
	duration := func() (time.Duration, error) {
		d, err := time.ParseDuration(value)
		if err != nil {
			return 0, bad("not a duration such as 30s or 500ms")
		}
		return d, nil
	}
	switch strings.TrimPrefix(name, DSNPrefix) {
	case "pause_timeout":
		d, err := duration()
		if err != nil {
			return nil, err
		}
		if d < 0 {
			return nil, bad("negative duration")
		}
		return WithPauseTimeout(d), nil
	case "on_pause_timeout":
		for _, a := range []PauseTimeoutAction{FailOnPauseTimeout, ResumeOnPauseTimeout} {
			if value == a.String() {
				return WithPauseTimeoutAction(a), nil
			}
		}
		return nil, bad("want fail or resume")
	case "close":
		for _, m := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
			if value == m.String() {
				return WithCloseMode(m), nil
			}
		}
		if value == "cancel" { // CloseCut's former name
			return WithCloseMode(CloseCut), nil
		}
		return nil, bad("want auto, cut or drain")
	case "drain_timeout":
		d, err := duration()
		if err != nil {
			return nil, err
		}
		if d <= 0 {
			return nil, bad("must be positive")
		}
		return WithDrainTimeout(d), nil
	case "mode":
		for _, m := range []StreamMode{ModeSingle, ModeCursor, ModePortal} {
			if value == m.String() {
				return WithStreamMode(m), nil
			}
		}
		if value == "auto" {
			return func(s *settings) error { s.modeSet = false; return nil }, nil
		}
		return nil, bad("want auto, single, cursor or portal")
	case "fetch_size":
		if value == "auto" {
			return WithFetchSize(FetchAuto), nil
		}
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 || n > MaxFetchSize {
			return nil, bad(fetchSizeRange)
		}
		return WithFetchSize(n), nil
	}
	return nil, fmt.Errorf("%w: unknown DSN parameter %s=%q%s", ErrInvalidOption, name, value, didYouMean(name))
}

// dsnNames are the DSN parameters jsonstream reads, as in DSNPrefix's list.
var dsnNames = []string{"pause_timeout", "on_pause_timeout", "close", "drain_timeout", "fetch_size", "mode"}

// didYouMean names the known DSN parameter closest to the unknown name, as
// in " (did you mean jsonstream_fetch_size?)", when one is a few typing
// errors away; otherwise it returns "".
func didYouMean(name string) string {
	typed := strings.ToLower(strings.TrimPrefix(name, DSNPrefix))
	best, bestDist := "", 0
	for _, known := range dsnNames {
		d := editDistance(typed, known)
		if best == "" || d < bestDist {
			best, bestDist = known, d
		}
	}
	// A third of the name may be wrong, and at least two letters.
	if bestDist > max(2, len(best)/3) {
		return ""
	}
	return " (did you mean " + DSNPrefix + best + "?)"
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// splitDSN removes jsonstream's parameters from a lib/pq DSN, in URL form
// (postgres://...?jsonstream_close=drain) or key=value form
// (host=db jsonstream_close=drain), and returns the rest unchanged byte for
// byte along with the options the parameters stand for. A DSN that does not
// mention the prefix is returned as it is, whatever its form, so DSNs of
// other inner drivers pass through; a URL's parameter names are read
// unescaped (jsonstream%5Fclose is jsonstream_close), as lib/pq reads them.
func splitDSN(dsn string) (string, []Option, error) {
	isURL := isURLDSN(dsn)
	escaped := isURL && strings.Contains(dsn, "%")
	if !escaped && !strings.Contains(dsn, DSNPrefix) {
		return dsn, nil, nil
	}
	if isURL {
		return splitURL(dsn)
	}
	return splitKeyValue(dsn)
}

// splitURL cuts the jsonstream_ parameters out of the query of a URL DSN.
// It reads parameters after the first '?' even when a '#' comes before it,
// where url.Parse sees a fragment: a password holding an unescaped '#'
// ends the userinfo there too.
func splitURL(dsn string) (string, []Option, error) {
	u := cutURL(dsn)
	query := u.query
	if !query.ok() && u.fragment.ok() {
		query = cutQuery(dsn, u.fragment.start)
	}
	if !query.ok() {
		return dsn, nil, nil
	}
	var out strings.Builder
	out.WriteString(dsn[:query.start-1]) // up to the '?'
	var opts []Option
	sep := "?" // before the first part kept, then '&'
	for s := newQueryScanner(dsn, query); ; {
		p, more := s.next()
		if !more {
			break
		}
		name, err := url.QueryUnescape(p.name.in(dsn))
		if err != nil || !strings.HasPrefix(name, DSNPrefix) {
			out.WriteString(sep)
			out.WriteString(p.part.in(dsn))
			sep = "&"
			continue
		}
		rawValue := ""
		if p.value.ok() {
			rawValue = p.value.in(dsn)
		}
		value, err := url.QueryUnescape(rawValue)
		if err != nil {
			return "", nil, fmt.Errorf("%w: DSN parameter %s=%q: bad URL escape", ErrInvalidOption, name, rawValue)
		}
		opt, err := dsnOption(name, value)
		if err != nil {
			return "", nil, err
		}
		opts = append(opts, opt)
	}
	out.WriteString(dsn[query.end:]) // the fragment, with its '#'
	return out.String(), opts, nil
}

// splitKeyValue cuts the jsonstream_ pairs out of a key=value DSN, keeping
// every other byte where it was; malformed input that is not jsonstream's
// is left for the inner driver to judge.
func splitKeyValue(dsn string) (string, []Option, error) {
	var out strings.Builder
	var opts []Option
	kept := 0 // where the bytes not yet written start
	for s := (kvScanner{dsn: dsn, pqSpaces: true}); ; {
		p, more := s.next()
		if !more {
			break
		}
		key := p.key.in(dsn)
		if !strings.HasPrefix(key, DSNPrefix) {
			out.WriteString(dsn[kept:p.end])
			kept = p.end
			continue
		}
		if p.err != nil {
			return "", nil, p.err
		}
		opt, err := dsnOption(key, unquoteKeyValue(p.value.in(dsn)))
		if err != nil {
			return "", nil, err
		}
		opts = append(opts, opt)
		kept = p.end
	}
	out.WriteString(dsn[kept:])
	return strings.TrimSpace(out.String()), opts, nil
}
