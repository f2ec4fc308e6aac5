package mesh

import (
	"fmt"
	"log/slog"
	"strings"
)

// natsLogger passes the embedded NATS server's log to slog: its notices at
// debug level (they are many and routine), warnings and errors as such.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }

// Errorf logs at error level, except a peer's route not up yet: routine while
// members start one after another (issue 5's heartbeats say when a peer is down).
func (n natsLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.HasPrefix(msg, "Error trying to connect to route") {
		n.l.Info(msg)
		return
	}
	n.l.Error(msg)
}
func (n natsLogger) Debugf(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
