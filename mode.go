package jsonstream

import "fmt"

// How a query's rows come from the server is decided here, and only here
// (chooseMode); the stream's events say which mode it got (Event.Mode).

// WithStreamMode chooses how queries' rows come from the server, in place
// of the automatic choice:
//
//   - ModeSingle sends the query as lib/pq does and streams its whole
//     result; an early Close drains or cuts (CloseMode).
//   - ModeCursor runs it as a cursor, in batches (see WithFetchSize, whose
//     FetchAuto it uses unless a batch size is set).
//   - ModePortal runs it in a portal of the extended protocol (portal.go):
//     full speed, and an early Close that keeps the connection. It needs a
//     connection whose wire jsonstream owns (one opened with sql.Open or
//     NewConnectorConfig) and a single statement that returns rows or may
//     (SELECT, VALUES, TABLE, WITH, INSERT, UPDATE, DELETE, MERGE, SHOW,
//     EXPLAIN); any other query fails with an error wrapping
//     ErrPortalQuery, and nothing of it runs.
//
// Without WithStreamMode (or with the DSN's jsonstream_mode=auto), a query
// with a batch size (WithFetchSize) is cursor-backed; a read that portal
// mode takes, on a connection whose wire jsonstream owns, is a portal
// stream; any other query runs in a single statement, as lib/pq runs it:
// a statement that writes (whose every ending must leave what lib/pq
// leaves, a cancel request included), several statements, a statement
// without rows, a query on a connection of another driver.
func WithStreamMode(m StreamMode) Option {
	return func(s *settings) error {
		if m > ModePortal {
			return invalid("WithStreamMode", m, "unknown mode")
		}
		s.mode, s.modeSet = m, true
		if m == ModeCursor && s.fetchSize == 0 {
			s.fetchSize = FetchAuto
		}
		return nil
	}
}

// chooseMode decides the mode of a query of owner (the conn, or a
// statement of it) with nargs arguments, under the stream's settings. For
// a portal stream it also returns the scan of the query's text, which the
// stream reads again.
func (c *conn) chooseMode(set *settings, owner any, query string, nargs int) (StreamMode, queryText, error) {
	if set.modeSet {
		if set.mode == ModeCursor && set.fetchSize == 0 {
			set.fetchSize = FetchAuto
		}
		if set.mode != ModePortal {
			return set.mode, queryText{}, nil
		}
		text := c.scan(query)
		if why := c.portalRefusal(owner, text, nargs); why != "" {
			return 0, text, fmt.Errorf("%w (WithStreamMode(ModePortal)): %s", ErrPortalQuery, why)
		}
		return ModePortal, text, nil
	}
	if set.fetchSize != 0 {
		return ModeCursor, queryText{}, nil
	}
	if c.wireOK {
		if text := c.scan(query); !text.writes && c.portalRefusal(owner, text, nargs) == "" {
			return ModePortal, text, nil
		}
	}
	return ModeSingle, queryText{}, nil
}

// scan returns scanQuery(query), scanning a text only when it differs
// from the last one's. The conn's statements call it, one at a time.
func (c *conn) scan(query string) queryText {
	if query != c.scannedText || query == "" {
		c.scannedText, c.scanned = query, scanQuery(query)
	}
	return c.scanned
}

// portalRefusal says why a query cannot run as a portal stream, or "".
func (c *conn) portalRefusal(owner any, text queryText, nargs int) string {
	switch {
	case !c.wireOK:
		return "jsonstream does not own this connection's wire (open it with sql.Open(\"jsonstream\", dsn) or NewConnectorConfig)"
	case !c.portalReady():
		return "the connection is not idle"
	}
	if st, ok := owner.(*stmt); ok && st.name == "" {
		return "jsonstream did not see the prepared statement's name on the server"
	}
	return portalText(text, owner == c && nargs == 0)
}
