// Package jsonstream is a database/sql driver that wraps github.com/lib/pq
// and gives every result set a state machine and pause/resume control.
//
//	db, err := sql.Open("jsonstream", dsn) // any lib/pq DSN
//
// Everything database/sql does through lib/pq it does the same way through
// jsonstream: the same values, column types, errors (*pq.Error passes
// through unchanged), transactions, pq.Array and pq.CopyIn. What is new:
//
//   - Each result set is a stream with a State (Running, Paused, Complete,
//     Failed, Closed) kept in an atomic. A Stream passed as one more query
//     argument controls it from any goroutine: Pause, Resume, Cancel, Stats.
//     While paused, nothing is read from the server; the server waits.
//     ContextWithStream carries a Stream to a query through its context
//     instead, for code that builds its query calls itself (sqlc, sqlx,
//     GORM); ContextWithOptions carries per-query settings to every query
//     of a context.
//   - A pause timeout (WithPauseTimeout, per connector or per Stream) stops a
//     forgotten pause from holding a connection and a server snapshot.
//   - Closing a stream before its end stops the server-side query instead of
//     reading the whole rest of the result (CloseMode).
//   - Portal streams, the default for reads on lib/pq connections from
//     sql.Open or NewConnectorConfig: jsonstream runs the statement itself
//     in a portal of the extended protocol, a window of batches at a time,
//     at the speed of a single statement; stopping early (Close, Cancel,
//     the pause timeout, the context) ends the portal and keeps the
//     connection, its session and the caller's transaction. WithStreamMode
//     (DSN jsonstream_mode) pins a mode.
//   - Cursor-backed streams (WithFetchSize, DSN jsonstream_fetch_size=auto)
//     run the query as a cursor and fetch it in batches: stopping early
//     closes the cursor and keeps the connection and its session, inside
//     and outside transactions.
//   - Resume keys (WithResumeKey): a stream ordered by a unique key gets
//     past a recovery conflict on a standby, a session ended, a crash, a
//     lost connection or a failover by running its query again from the
//     last key it delivered, on a new connection if need be; every row's
//     key is checked to follow the last, so no row comes twice or is lost.
//     With WithResumeAfterPause a long pause lets the server-side query go
//     (its snapshot, locks and standby conflicts) and continues on Resume.
//   - An Observer (WithObserver) hears of every stream's start, first row,
//     pauses, pause timeouts and end, with how it ended; the
//     github.com/jsonstream/jsonstream/jsonstreamotel module turns these events into
//     OpenTelemetry metrics and span events.
//   - JSON documents: Each and ForEach iterate a result as typed values,
//     WriteNDJSON and WriteJSONArray stream it to an io.Writer, in flat
//     memory and with any driver.
//   - No error carries a password: the DSN's passwords are masked in the
//     errors of OpenConnector and Connect, lib/pq's own included (it
//     returns Go's url.Parse error, which quotes a malformed URL DSN).
//
// # The stream contract
//
// The driver.Rows that jsonstream returns implement Controller; a Stream
// reaches the same methods from code that only has a *sql.Rows. The
// methods may be called from any goroutine at any time and never block.
//
//   - After Pause returns, Next delivers no further row until Resume, and the
//     inner driver's Next is not called. Pause on a paused stream and Resume
//     on a running one do nothing.
//   - A Next blocked by a pause returns when Resume is called; when the
//     query's context or its transaction's ends (with the context's error:
//     database/sql cannot interrupt a blocked driver Next, so jsonstream
//     watches the contexts);
//     when Cancel is called (ErrCanceled); when the pause timeout expires
//     (ErrPauseTimeout, or the stream resumes under ResumeOnPauseTimeout).
//   - Pause, Resume and Cancel on a Complete, Failed or Closed stream return
//     an error wrapping ErrStreamEnded and change nothing.
//   - A stream that fails by Cancel, pause timeout or context (the query's,
//     or the transaction's it runs in) stops its query on the server. A
//     portal stream ends its portal and keeps the connection. A
//     single-statement stream has its connection cut: database/sql discards
//     the connection, so it never returns to the pool in the middle of a
//     result. A cursor-backed stream
//     instead closes its cursor when it is closed and keeps the connection;
//     only a batch in flight that does not arrive within the drain timeout
//     is cut.
//   - Tx.Commit, Tx.Rollback and Rows.Close called from another goroutine
//     while Next is paused wait for it: see [Controller].
//   - The pause machinery (lock, channel, timer, counters) is allocated by the
//     first Pause; a stream that never pauses carries only its atomic state
//     and counters.
//
// # Configuration
//
// Settings are given as Options to NewConnector or NewDriver, or as DSN
// parameters starting with DSNPrefix, which are removed before the DSN
// reaches lib/pq. Options attached to a query's context (ContextWithOptions)
// override them, and a Stream's own Options override both for its query.
//
// # Wrapping
//
// NewConnector wraps any driver.Connector, NewDriver any driver.Driver
// (go-sqlmock's, pgx's stdlib driver). Every optional interface of the
// inner connection, statement and rows is forwarded, with the fallbacks
// database/sql applies when the inner value lacks one; sql.Conn.Raw hands
// out the jsonstream connection, whose Unwrap method returns the inner one.
//
// # The wire beneath lib/pq
//
// With lib/pq inside (sql.Open, NewConnectorConfig), jsonstream's dialer
// negotiates TLS as lib/pq would for the same settings, and hands lib/pq
// the connection with TLS established; the socket then follows the
// backend's messages as they pass to lib/pq (message boundaries, whether
// the connection is idle, its transaction status, the server's FATAL
// error). Between lib/pq's exchanges, portal streams speak the streaming
// part of the protocol on the same connection, and hand back to lib/pq
// what it tracks (ParameterStatus, notifications, the transaction
// status). lib/pq does everything else. sslmode=allow, sslmode=prefer with
// connect_timeout and sslmode=pqgo-… keep lib/pq's own TLS, as does a
// *pq.Connector wrapped with NewConnector. The README's "How it works"
// has the details.
package jsonstream
