package main

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jsonstream/jsonstream"
	"github.com/lib/pq"
)

// tally is the demo's jsonstream.Observer: it adds up what every stream
// of the demo's database went through, QueryRow and the loader's queries
// included, for the summary.
type tally struct {
	mu       sync.Mutex // guards the fields below: events come from any goroutine
	outcomes [jsonstream.OutcomeFailed + 1]int64
	rows     int64
	pauses   int64
	timeouts int64
	cut      int64
	paused   time.Duration
}

// ObserveStream implements jsonstream.Observer.
func (t *tally) ObserveStream(e jsonstream.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.Kind {
	case jsonstream.EventPaused:
		t.pauses++
	case jsonstream.EventPauseTimeout:
		t.timeouts++
	case jsonstream.EventEnded:
		if int(e.Outcome) < len(t.outcomes) {
			t.outcomes[e.Outcome]++
		}
		t.rows += e.Stats.Rows
		t.paused += e.Stats.PausedTotal
		if e.ConnCut {
			t.cut++
		}
	}
}

// String is the summary's line: the streams by outcome, then the totals.
func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var streams int64
	var by []string
	for o, n := range t.outcomes {
		if n > 0 {
			streams += n
			by = append(by, fmt.Sprintf("%s %d", jsonstream.Outcome(o), n))
		}
	}
	return fmt.Sprintf("%s (%s); %s, %s (%s paused), %s, %s cut",
		plural(streams, "stream"), strings.Join(by, ", "), plural(t.rows, "row"),
		plural(t.pauses, "pause"), seconds(t.paused), plural(t.timeouts, "pause timeout"),
		plural(t.cut, "connection"))
}

// openObserved opens dsn as sql.Open("jsonstream", dsn) does, with o
// observing every stream.
func openObserved(dsn string, o jsonstream.Observer) (*sql.DB, error) {
	drv, err := jsonstream.NewDriver(pq.Driver{}, jsonstream.WithObserver(o))
	if err != nil {
		return nil, err
	}
	connector, err := drv.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(connector), nil
}
