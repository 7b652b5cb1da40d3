// smsc-bench: a fast SMSC simulator for the benchmark, speaking real SMPP 3.4 over TCP.
//
// It behaves like connectors/smsc_sim.py (same flags, same JSONL submit log, same
// control channel, same answers and receipts, same store-and-forward of deliver_sm) at a
// fraction of its CPU cost per submit_sm. smsc_sim.py's docstring describes the
// behaviour; tests/integration/test_fast_smsc.py runs the same SMPP conversations against
// both and compares what they answer, log and deliver. The differences:
//
//   - The random numbers come from Go's math/rand: --seed gives a reproducible stream
//     here, but not the draws of Python's random module.
//   - The --log file is written in batches (every --log-flush-ms, default 50 ms) rather
//     than line by line; every write ends on a whole line, and stopping writes the rest.
//   - Receipts and re-deliveries go out on a 5 ms tick (at most 5 ms later than due).
//   - Validity periods with non-ASCII digits are refused (Python's int() reads them).
//   - It runs on one CPU (GOMAXPROCS=1 unless the variable is set): fewer thread
//     hand-offs per PDU; one core carries well over 30k submit_sm/s.
//
// Build it with infra/smsc-bench/build.sh (`make smsc-bench`); connectors/fast_smsc.py
// starts it the way pipeline.procs.start_simulator starts smsc_sim, and
// infra/smsc-bench/load.py measures its CPU per submit_sm. SMSC_BENCH_CPUPROFILE=<file>
// writes a Go CPU profile (go tool pprof) when it stops.
//
// Shape: one reader goroutine per connection (bufio.Reader) decodes PDUs and handles them
// under the server mutex; one writer goroutine per connection writes everything queued
// for it in one write once the reader (or the timer) has finished its batch; one timer
// goroutine over two min-heaps (delayed answers; receipts and re-deliveries); a 50 ms
// housekeeping tick (deliver_sm timeouts, enquire_link to silent ESMEs) and a log flusher.
package main

import (
	"bufio"
	"container/heap"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/big"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

// ── SMPP constants ───────────────────────────────────────────────────────────

const (
	respBit         = 0x80000000
	cmdGenericNack  = 0x80000000
	cmdBindRX       = 0x00000001
	cmdBindTX       = 0x00000002
	cmdSubmitSM     = 0x00000004
	cmdDeliverSM    = 0x00000005
	cmdDataSM       = 0x00000103
	cmdUnbind       = 0x00000006
	cmdBindTRX      = 0x00000009
	cmdEnquireLink  = 0x00000015
	esmeROK         = 0x00
	esmeRINVCMDLEN  = 0x02
	esmeRINVCMDID   = 0x03
	esmeRINVBNDSTS  = 0x04
	esmeRALYBND     = 0x05
	esmeRSYSERR     = 0x08
	esmeRBINDFAIL   = 0x0D
	esmeRTHROTTLED  = 0x58
	esmeRINVEXPIRY  = 0x62
	esmeRXPAPPN     = 0x65
	tlvReceiptedID  = 0x001E
	tlvMessageState = 0x0427
	tlvPayload      = 0x0424
	maxPDUBytes     = 1 << 17
	maxSequence     = 0x7FFFFFFF
	outboxMax       = 100_000 // per system id, oldest dropped first (smsc_sim's deque maxlen)
	responseTimeout = 10 * time.Second
	tickEvery       = 50 * time.Millisecond
	timerSlack      = time.Millisecond // answers due within this are sent together
	// Receipts and re-deliveries are written in batches, at most this often (each one
	// at most this late): fewer wake-ups and writes per receipt at moderate rates.
	deliveryTick = 5 * time.Millisecond
)

var stateCodes = map[string]byte{
	"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4,
	"UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8,
}

var errorCodes = map[string]string{"DELIVRD": "000", "UNDELIV": "001", "EXPIRED": "027", "REJECTD": "011"}

// ── configuration (the flags of smsc_sim.py) ─────────────────────────────────

type config struct {
	host                  string
	port                  int
	systemID              string
	latency               [2]float64 // ms
	failureRate           float64
	throttleAbovePerS     float64
	dropResponseRate      float64
	dropHoldMs            float64
	receiptDelay          [2]float64 // ms
	outcomeNames          []string
	outcomeCum            []float64
	receiptBeforeResponse float64
	seed                  int64
	seeded                bool
	logPath               string
	controlPort           int // -1: off
	keepSubmits           int
	deliverTimeout        time.Duration
	deliverWindow         int
	redeliver             time.Duration
	enquireLink           time.Duration
	refuseBinds           uint32
	logFlush              time.Duration
	deliverAnyBind        bool // receipts and MO round-robin over the account's binds
	receiptIDsDecimal     bool // receipts name the message in decimal (submit_sm_resp: hex)
	noTransceiver         bool // bind_transceiver answered generic_nack ESME_RINVCMDID
	receiptsAsDataSM      bool // receipts in data_sm (text in message_payload)
}

// pyFloat reads a float the way Python's float() does for the values flags carry.
func pyFloat(s string) (float64, error) {
	return strconv.ParseFloat(strings.TrimSpace(strings.ReplaceAll(s, "_", "")), 64)
}

// span: "N" or "LOW-HIGH" milliseconds (connectors.sim_args.span).
func span(text string) ([2]float64, error) {
	low, high, found := strings.Cut(text, "-")
	lo, err := pyFloat(low)
	if err != nil {
		return [2]float64{}, err
	}
	if !found || high == "" {
		return [2]float64{lo, lo}, nil
	}
	hi, err := pyFloat(high)
	return [2]float64{lo, hi}, err
}

// weights: "A=90,B=10" (connectors.sim_args.weights), names upper-cased, in first-seen order.
func weights(text string) ([]string, map[string]float64, error) {
	var order []string
	out := map[string]float64{}
	for _, item := range strings.Split(text, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		name, weight, _ := strings.Cut(item, "=")
		name = strings.ToUpper(strings.TrimSpace(name))
		w := 1.0
		if weight != "" {
			v, err := pyFloat(weight)
			if err != nil {
				return nil, nil, err
			}
			w = v
		}
		if _, seen := out[name]; !seen {
			order = append(order, name)
		}
		out[name] = w
	}
	return order, out, nil
}

type spanFlag struct{ v *[2]float64 }

func (f spanFlag) String() string {
	if f.v == nil {
		return ""
	}
	return fmt.Sprintf("%g-%g", f.v[0], f.v[1])
}
func (f spanFlag) Set(s string) error {
	v, err := span(s)
	if err == nil {
		*f.v = v
	}
	return err
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("smsc-bench", flag.ContinueOnError)
	fs.StringVar(&c.host, "host", "127.0.0.1", "listen address")
	fs.IntVar(&c.port, "port", 2775, "SMPP port")
	fs.StringVar(&c.systemID, "system-id", "RASSYLKA-SIM", "system_id answered to binds")
	c.latency = [2]float64{0, 0}
	fs.Var(spanFlag{&c.latency}, "latency-ms", "submit_sm_resp delay: N or LOW-HIGH")
	fs.Float64Var(&c.failureRate, "failure-rate", 0, "share of submits answered ESME_RSYSERR")
	fs.Float64Var(&c.throttleAbovePerS, "throttle-above-per-s", 0, "per-session submits/s before ESME_RTHROTTLED; 0 = off")
	fs.Float64Var(&c.dropResponseRate, "drop-response-rate", 0, "share of submits accepted but not answered")
	fs.Float64Var(&c.dropHoldMs, "drop-hold-ms", 120_000, "how long a dropped answer is withheld")
	c.receiptDelay = [2]float64{50, 200}
	fs.Var(spanFlag{&c.receiptDelay}, "receipt-delay-ms", "N or LOW-HIGH")
	outcomes := fs.String("receipt-outcomes", "DELIVRD=0.92,UNDELIV=0.04,EXPIRED=0.02,REJECTD=0.02", "e.g. DELIVRD=90,UNDELIV=5,EXPIRED=3,REJECTD=2")
	fs.Float64Var(&c.receiptBeforeResponse, "receipt-before-response", 0, "share of accepted submits whose DLR precedes the resp")
	seed := fs.String("seed", "", "random seed")
	fs.StringVar(&c.logPath, "log", "", "append submits as JSON lines")
	fs.IntVar(&c.controlPort, "control-port", -1, "HTTP control channel port (off when not given)")
	fs.IntVar(&c.keepSubmits, "keep-submits", 200_000, "in-memory submit log size")
	deliverTimeout := fs.Float64("deliver-timeout-s", 30, "wait this long for a deliver_sm_resp, then deliver again later")
	fs.IntVar(&c.deliverWindow, "deliver-window", 512, "deliver_sm awaiting their answer, per session")
	redeliver := fs.Float64("redeliver-s", 5, "wait before retrying a refused or unanswered deliver_sm")
	fs.BoolVar(&c.deliverAnyBind, "deliver-any-bind", false, "deliver receipts and MO round-robin over all receiving binds of the account")
	fs.BoolVar(&c.receiptsAsDataSM, "receipts-as-data-sm", false, "deliver receipts in data_sm (text in message_payload) instead of deliver_sm")
	fs.BoolVar(&c.noTransceiver, "no-transceiver", false, "answer bind_transceiver with generic_nack ESME_RINVCMDID (SMPP 3.3 SMSCs)")
	fs.BoolVar(&c.receiptIDsDecimal, "receipt-ids-decimal", false, "name messages in receipts by their id in decimal (submit_sm_resp gives hex)")
	refuse := fs.String("refuse-binds", "0", "answer every bind with this status, e.g. 0x0D (ESME_RBINDFAIL)")
	flushMs := fs.Float64("log-flush-ms", 50, "write the --log file at most this often (ms)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *seed != "" {
		v, err := strconv.ParseInt(strings.TrimSpace(*seed), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--seed: %v", err)
		}
		c.seed, c.seeded = v, true
	}
	order, w, err := weights(*outcomes)
	if err != nil {
		return nil, fmt.Errorf("--receipt-outcomes: %v", err)
	}
	var unknown []string
	total := 0.0
	for _, name := range order {
		if w[name] <= 0 {
			continue
		}
		if _, ok := stateCodes[name]; !ok {
			unknown = append(unknown, name)
			continue
		}
		total += w[name]
		c.outcomeNames = append(c.outcomeNames, name)
		c.outcomeCum = append(c.outcomeCum, total)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown receipt states: %v", unknown)
	}
	if len(c.outcomeNames) == 0 {
		c.outcomeNames, c.outcomeCum = []string{"DELIVRD"}, []float64{1}
	}
	refuseV, err := strconv.ParseUint(strings.TrimSpace(*refuse), 0, 32)
	if err != nil {
		return nil, fmt.Errorf("--refuse-binds: %v", err)
	}
	c.refuseBinds = uint32(refuseV)
	c.deliverTimeout = seconds(*deliverTimeout)
	c.redeliver = seconds(*redeliver)
	c.enquireLink = 30 * time.Second
	c.logFlush = time.Duration(*flushMs * float64(time.Millisecond))
	if c.logFlush <= 0 {
		c.logFlush = time.Millisecond
	}
	return c, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// ── text helpers: what smpp34 / Python do to the same bytes ──────────────────

// lossyUTF8 decodes like Rust's String::from_utf8_lossy (smpp34's C-Octet strings): one
// U+FFFD per maximal invalid subpart.
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || size > 1 {
			out = append(out, b[i:i+size]...)
			i += size
			continue
		}
		out = append(out, "\uFFFD"...)
		i += invalidPrefix(b[i:])
	}
	return string(out)
}

// invalidPrefix: the length of the maximal prefix of b that starts a UTF-8 sequence (at
// least 1), i.e. what one U+FFFD replaces.
func invalidPrefix(b []byte) int {
	c := b[0]
	need, lo, hi := 0, byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1
	}
	i := 1
	for k := 0; k < need; k++ {
		if i >= len(b) {
			return i
		}
		x := b[i]
		if k == 0 {
			if x < lo || x > hi {
				return i
			}
		} else if x < 0x80 || x > 0xBF {
			return i
		}
		i++
	}
	return i
}

// latin1 decodes bytes as ISO-8859-1 (Python's read_cstring for bind fields).
func latin1(b []byte) string {
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return string(b)
	}
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// utf16be decodes like Python's bytes.decode("utf-16-be", errors="replace"), calling
// emit per character; emit returns false to stop.
func utf16be(b []byte, emit func(rune) bool) {
	n := len(b)
	for i := 0; i < n; {
		if n-i < 2 {
			emit(0xFFFD)
			return
		}
		u := rune(b[i])<<8 | rune(b[i+1])
		switch {
		case u < 0xD800 || u > 0xDFFF:
			i += 2
		case u >= 0xDC00:
			u = 0xFFFD
			i += 2
		case n-i < 4:
			emit(0xFFFD)
			return
		default:
			u2 := rune(b[i+2])<<8 | rune(b[i+3])
			if u2 >= 0xDC00 && u2 <= 0xDFFF {
				u = 0x10000 + (u-0xD800)<<10 + (u2 - 0xDC00)
				i += 4
			} else {
				u = 0xFFFD
				i += 2
			}
		}
		if !emit(u) {
			return
		}
	}
}

// pyPrintable is Python's str.isprintable for one character.
func pyPrintable(r rune) bool {
	if r < 0x100 {
		return (r >= 0x20 && r <= 0x7E) || (r >= 0xA1 && r != 0xAD)
	}
	return unicode.IsPrint(r)
}

// receiptPreview: the receipt's text: field as smsc_sim builds it (UDH stripped, UCS-2 or
// latin-1, the first 20 characters, unprintable ones dropped), encoded latin-1/replace.
func receiptPreview(sm []byte, esmClass, dataCoding byte) []byte {
	body := sm
	if esmClass&0x40 != 0 && len(body) > 0 {
		skip := 1 + int(body[0])
		if skip >= len(body) {
			body = nil
		} else {
			body = body[skip:]
		}
	}
	out := make([]byte, 0, 20)
	count := 0
	add := func(r rune) bool {
		if count >= 20 {
			return false
		}
		count++
		if pyPrintable(r) {
			if r < 0x100 {
				out = append(out, byte(r))
			} else {
				out = append(out, '?')
			}
		}
		return true
	}
	if dataCoding == 8 {
		utf16be(body, add)
	} else {
		for _, c := range body {
			if !add(rune(c)) {
				break
			}
		}
	}
	return out
}

// appendPyJSONString appends s as Python's json.dumps (ensure_ascii=True) writes it.
const hexDigits = "0123456789abcdef"

func appendPyJSONString(b []byte, s string) []byte {
	const hexd = hexDigits
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"':
			b = append(b, '\\', '"')
		case r == '\\':
			b = append(b, '\\', '\\')
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r >= 0x20 && r <= 0x7E:
			b = append(b, byte(r))
		default:
			if r >= 0x10000 {
				r -= 0x10000
				hiS, loS := 0xD800+(r>>10), 0xDC00+(r&0x3FF)
				b = append(b, '\\', 'u', hexd[hiS>>12&0xF], hexd[hiS>>8&0xF], hexd[hiS>>4&0xF], hexd[hiS&0xF])
				r = loS
			}
			b = append(b, '\\', 'u', hexd[r>>12&0xF], hexd[r>>8&0xF], hexd[r>>4&0xF], hexd[r&0xF])
		}
	}
	return append(b, '"')
}

// ── SMPP time (connectors.smpp_session.parse_time) ───────────────────────────

func pyIsSpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1C && r <= 0x1F) }

// pyInt2 is Python's int() of a two-character string (whitespace, a sign, ASCII digits).
func pyInt2(a, b rune) (int, bool) {
	s := []rune{a, b}
	for len(s) > 0 && pyIsSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && pyIsSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	sign := 1
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		if s[0] == '-' {
			sign = -1
		}
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, false
	}
	v := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, false
		}
		v = v*10 + int(r-'0')
	}
	return sign * v, true
}

// parseTime: epoch ms of an SMPP absolute or relative time; has=false for "";
// ok=false where smsc_sim's parse_time raises ValueError (ESME_RINVEXPIRY).
func parseTime(value string, nowMs int64) (ms int64, has bool, ok bool) {
	if value == "" {
		return 0, false, true
	}
	r := []rune(value)
	if len(r) != 16 || (r[15] != '+' && r[15] != '-' && r[15] != 'R') {
		return 0, false, false
	}
	for _, c := range r[:13] {
		if c < '0' || c > '9' {
			return 0, false, false
		}
	}
	two := func(i int) int { return int(r[i]-'0')*10 + int(r[i+1]-'0') }
	yy, mo, dd, hh, mi, ss := two(0), two(2), two(4), two(6), two(8), two(10)
	if r[15] == 'R' {
		secs := int64(((((yy*365+mo*30+dd)*24+hh)*60 + mi) * 60) + ss)
		return nowMs + secs*1000, true, true
	}
	tenths := int(r[12] - '0')
	quarters, good := pyInt2(r[13], r[14])
	if !good || quarters > 48 {
		return 0, false, false
	}
	year := 2000 + yy
	if mo < 1 || mo > 12 || dd < 1 || dd > daysIn(year, mo) || hh > 23 || mi > 59 || ss > 59 {
		return 0, false, false
	}
	local := time.Date(year, time.Month(mo), dd, hh, mi, ss, tenths*100_000_000, time.UTC)
	offset := time.Duration(15*quarters) * time.Minute
	var utc time.Time
	if r[15] == '+' {
		utc = local.Add(-offset)
	} else {
		utc = local.Add(offset)
	}
	// Python: int(utc.timestamp() * 1000), timestamp() = microseconds / 1e6 as a float.
	micros := utc.Unix()*1_000_000 + int64(utc.Nanosecond()/1000)
	return int64(float64(micros) / 1e6 * 1000), true, true
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// smsDate: "%y%m%d%H%M" in UTC.
func smsDate(ms int64) string { return time.UnixMilli(ms).UTC().Format("0601021504") }

// ── submit_sm decoding (what smpp34.decode accepts) ──────────────────────────

type submitSM struct {
	srcTon, srcNpi, dstTon, dstNpi byte
	src, dst, validity             []byte
	esmClass, registered, coding   byte
	shortMessage                   []byte
}

type cursor struct {
	b   []byte
	i   int
	bad bool
}

func (c *cursor) cstring() []byte {
	if c.bad {
		return nil
	}
	j := -1
	for k := c.i; k < len(c.b); k++ {
		if c.b[k] == 0 {
			j = k
			break
		}
	}
	if j < 0 {
		c.bad = true
		return nil
	}
	s := c.b[c.i:j]
	c.i = j + 1
	return s
}

func (c *cursor) byte1() byte {
	if c.bad || c.i >= len(c.b) {
		c.bad = true
		return 0
	}
	v := c.b[c.i]
	c.i++
	return v
}

// decodeSubmit reads a submit_sm body; false where smpp34 raises SmppError. Optional
// parameters are not needed (smsc_sim logs none) and, like smpp34, never fail a decode.
func decodeSubmit(body []byte) (sm submitSM, ok bool) {
	c := cursor{b: body}
	c.cstring() // service_type
	sm.srcTon, sm.srcNpi = c.byte1(), c.byte1()
	sm.src = c.cstring()
	sm.dstTon, sm.dstNpi = c.byte1(), c.byte1()
	sm.dst = c.cstring()
	sm.esmClass = c.byte1()
	c.byte1()   // protocol_id
	c.byte1()   // priority_flag
	c.cstring() // schedule_delivery_time
	sm.validity = c.cstring()
	sm.registered = c.byte1()
	c.byte1() // replace_if_present_flag
	sm.coding = c.byte1()
	c.byte1() // sm_default_msg_id
	n := int(c.byte1())
	if c.bad || c.i+n > len(body) {
		return sm, false
	}
	sm.shortMessage = body[c.i : c.i+n]
	return sm, true
}

// ── PDU building ─────────────────────────────────────────────────────────────

func appendHeader(b []byte, length int, cmd, status, seq uint32) []byte {
	return append(b,
		byte(length>>24), byte(length>>16), byte(length>>8), byte(length),
		byte(cmd>>24), byte(cmd>>16), byte(cmd>>8), byte(cmd),
		byte(status>>24), byte(status>>16), byte(status>>8), byte(status),
		byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq))
}

type tlv struct {
	tag   uint16
	value []byte
}

// deliverBody: a deliver_sm body byte-identical to smpp34.DeliverSm(...).encode()[16:]
// with the fields smsc_sim sets (everything else zero / empty).
func deliverBody(src string, srcTon, srcNpi byte, dst string, dstTon, dstNpi byte,
	esmClass, dataCoding byte, sm []byte, tlvs ...tlv) []byte {
	size := 24 + len(src) + len(dst) + len(sm)
	for _, t := range tlvs {
		size += 4 + len(t.value)
	}
	b := make([]byte, 0, size)
	b = append(b, 0, srcTon, srcNpi)
	b = append(b, src...)
	b = append(b, 0, dstTon, dstNpi)
	b = append(b, dst...)
	b = append(b, 0, esmClass, 0, 0, 0, 0, 0, 0, dataCoding, 0, byte(len(sm)))
	b = append(b, sm...)
	for _, t := range tlvs {
		b = append(b, byte(t.tag>>8), byte(t.tag), byte(len(t.value)>>8), byte(len(t.value)))
		b = append(b, t.value...)
	}
	return b
}

// dataBody: a data_sm body as connectors.smpp_session.DataSm.encode writes it (no
// service_type; NPI 1 for international numbers, else 0).
func dataBody(src string, srcTon byte, dst string, dstTon byte, esmClass, dataCoding byte,
	tlvs ...tlv) []byte {
	npi := func(ton byte) byte {
		if ton == 1 {
			return 1
		}
		return 0
	}
	b := make([]byte, 0, 16+len(src)+len(dst))
	b = append(b, 0, srcTon, npi(srcTon))
	b = append(b, src...)
	b = append(b, 0, dstTon, npi(dstTon))
	b = append(b, dst...)
	b = append(b, 0, esmClass, 0, dataCoding)
	for _, t := range tlvs {
		b = append(b, byte(t.tag>>8), byte(t.tag), byte(len(t.value)>>8), byte(len(t.value)))
		b = append(b, t.value...)
	}
	return b
}

// ── token bucket (pipeline.sender.throttle.TokenBucket via sim_args.admission) ───

type tokenBucket struct {
	rate, burst, tokens, last float64
	started                   bool
}

func admission(rate float64) *tokenBucket {
	burst := math.Max(1, rate*0.2)
	return &tokenBucket{rate: rate, burst: burst, tokens: burst}
}

func (t *tokenBucket) tryTake(now float64) bool {
	tokens := t.tokens
	if !t.started || now <= t.last {
		if !t.started {
			t.started, t.last = true, now
		}
	} else {
		tokens = math.Min(t.burst, t.tokens+(now-t.last)*t.rate)
		t.tokens, t.last = tokens, now
	}
	if tokens+1e-9 >= 1 {
		t.tokens = math.Max(tokens-1, 0)
		return true
	}
	return false
}

// ── the outbox: a FIFO with smsc_sim's deque(maxlen=100_000) semantics ───────

type delivery struct {
	systemID string
	pref     *conn // the session to prefer (nil: any of the system id)
	body     []byte
	attempts int
	cmd      uint32 // cmdDeliverSM, or cmdDataSM (receiptsAsDataSM)
}

type deque struct {
	buf        []*delivery
	head, size int
}

func (q *deque) grow() {
	n := len(q.buf) * 2
	if n == 0 {
		n = 64
	}
	nb := make([]*delivery, n)
	for i := 0; i < q.size; i++ {
		nb[i] = q.buf[(q.head+i)%len(q.buf)]
	}
	q.buf, q.head = nb, 0
}

func (q *deque) pushBack(d *delivery) {
	if q.size == outboxMax {
		q.popFront()
	}
	if q.size == len(q.buf) {
		q.grow()
	}
	q.buf[(q.head+q.size)%len(q.buf)] = d
	q.size++
}

func (q *deque) front() *delivery { return q.buf[q.head] }

func (q *deque) popFront() *delivery {
	d := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	return d
}

// ── timers: a min-heap ───────────────────────────────────────────────────────

const (
	evAnswer = iota
	evReceipt
	evRetry
)

type event struct {
	due    int64 // monotonic ns
	kind   int
	c      *conn
	seq    uint32
	status uint32
	msgID  string
	job    *receiptJob
	d      *delivery
}

type eventHeap []*event

func (h eventHeap) Len() int            { return len(h) }
func (h eventHeap) Less(i, j int) bool  { return h[i].due < h[j].due }
func (h eventHeap) Swap(i, j int)       { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x interface{}) { *h = append(*h, x.(*event)) }
func (h *eventHeap) Pop() interface{} {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return e
}

// receiptJob: what _receipt_due needs of a SubmitRecord.
type receiptJob struct {
	systemID                       string
	pref                           *conn
	messageID                      string
	atMs, validUntil               int64
	hasValid                       bool
	registered                     byte
	src, dst                       string
	srcTon, srcNpi, dstTon, dstNpi byte
	preview                        []byte
}

// ── connections ──────────────────────────────────────────────────────────────

const (
	pendDeliver = iota
	pendProbe
	pendUnbind
)

type pending struct {
	kind     int
	d        *delivery
	deadline int64
}

type pendRef struct {
	seq uint32
	p   *pending
}

type conn struct {
	s  *server
	nc net.Conn
	id string

	// Under s.mu.
	systemID  string
	bindType  string // "", "RX", "TX", "TRX"
	closed    bool
	inFlight  int // deliver_sm awaiting their answer
	pend      map[uint32]*pending
	fifo      []pendRef // deliver_sm in the order sent (same timeout: deadlines ascend)
	fifoHead  int
	seq       uint32
	lastHeard int64
	probe     *pending
	unbind    *pending
	bucket    *tokenBucket
	dirty     bool

	// The writer's queue.
	outMu   sync.Mutex
	out     []byte
	closing bool
	wake    chan struct{}
	done    chan struct{} // closed when the writer has finished
}

func (c *conn) canReceive() bool  { return !c.closed && (c.bindType == "RX" || c.bindType == "TRX") }
func (c *conn) canTransmit() bool { return c.bindType == "TX" || c.bindType == "TRX" }

// writePDU queues one PDU (s.mu held); a no-op on a closed session.
func (c *conn) writePDU(cmd, status, seq uint32, body []byte) bool {
	if c.closed {
		return false
	}
	c.outMu.Lock()
	c.out = appendHeader(c.out, 16+len(body), cmd, status, seq)
	c.out = append(c.out, body...)
	c.outMu.Unlock()
	if !c.dirty {
		c.dirty = true
		c.s.dirty = append(c.s.dirty, c)
	}
	return true
}

func (c *conn) respond(cmd, status, seq uint32, body []byte) {
	c.writePDU(cmd|respBit, status, seq, body)
}

func (c *conn) nack(seq, status uint32) { c.writePDU(cmdGenericNack, status, seq, nil) }

// request writes one of our requests and remembers it (s.mu held).
func (c *conn) request(cmd uint32, body []byte, p *pending) uint32 {
	if c.closed {
		return 0
	}
	c.seq = c.seq%maxSequence + 1
	for c.pend[c.seq] != nil {
		c.seq = c.seq%maxSequence + 1
	}
	c.pend[c.seq] = p
	c.writePDU(cmd, esmeROK, c.seq, body)
	return c.seq
}

func (c *conn) writer() {
	defer close(c.done)
	var buf []byte
	for range c.wake {
		c.outMu.Lock()
		buf, c.out = c.out, buf[:0]
		closing := c.closing
		c.outMu.Unlock()
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				c.nc.Close()
				c.s.mu.Lock()
				c.s.closeConn(c)
				c.s.mu.Unlock()
				return
			}
		}
		if closing {
			c.nc.Close()
			return
		}
	}
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *conn) reader() {
	s := c.s
	br := bufio.NewReaderSize(c.nc, 64<<10)
	var hdr [16]byte
	body := make([]byte, 0, 1024)
	defer func() {
		s.mu.Lock()
		s.closeConn(c)
		s.kick()
		s.mu.Unlock()
	}()
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		length := int(be32(hdr[0:]))
		cmd, status, seq := be32(hdr[4:]), be32(hdr[8:]), be32(hdr[12:])
		if length < 16 || length > maxPDUBytes {
			log.Printf("smsc-bench/%s: command_length %d, dropping the session", c.id, length)
			s.mu.Lock()
			c.nack(0, esmeRINVCMDLEN)
			s.mu.Unlock()
			return
		}
		if cap(body) < length-16 {
			body = make([]byte, length-16)
		}
		body = body[:length-16]
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		more := moreBuffered(br)
		s.mu.Lock()
		c.lastHeard = s.mono()
		s.dispatch(c, cmd, status, seq, body)
		if !more || c.closed {
			s.kick()
		}
		closed := c.closed
		s.mu.Unlock()
		if closed {
			return
		}
	}
}

// moreBuffered: a whole PDU is already in the read buffer (no need to flush yet).
func moreBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 16 {
		return false
	}
	h, err := br.Peek(4)
	if err != nil {
		return false
	}
	return int(be32(h)) <= n
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// ── the server ───────────────────────────────────────────────────────────────

type stats struct {
	deliveriesSent, delivered, refused, unanswered, sessionLost, givenUp int
}

type server struct {
	cfg  *config
	t0   time.Time
	ln   net.Listener
	pid  int
	wake chan struct{} // the timer goroutine: an earlier event was scheduled

	mu          sync.Mutex
	rng         *rand.Rand
	conns       map[*conn]struct{}
	sessions    []*conn // bound, in bind order
	connections int
	outbox      map[string]*deque
	retrying    int
	timers      eventHeap // delayed answers
	slow        eventHeap // receipts and re-deliveries (deliveryTick)
	lastSlow    int64
	dirty       []*conn
	stats       stats
	nextRecv    int    // round-robin position (deliverAnyBind)
	nextHi      uint64 // the next message id is nextHi<<24 + nextLo (smsc_sim: ms << 24)
	nextLo      uint32
	submitCount int
	ring        []string // the newest keepSubmits log lines
	ringHead    int
	logBuf      []byte
	stopping    bool
	stopped     bool
}

func (s *server) mono() int64 { return int64(time.Since(s.t0)) }

// kick wakes the writers of every connection written to (s.mu held).
func (s *server) kick() {
	for i, c := range s.dirty {
		c.dirty = false
		c.signal()
		s.dirty[i] = nil
	}
	s.dirty = s.dirty[:0]
}

func (s *server) newID() string {
	s.nextLo++
	if s.nextLo == 1<<24 {
		s.nextLo, s.nextHi = 0, s.nextHi+1
	}
	b := make([]byte, 0, 20)
	b = strconv.AppendUint(b, s.nextHi, 16)
	lo := strconv.FormatUint(uint64(s.nextLo), 16)
	for i := len(lo); i < 6; i++ {
		b = append(b, '0')
	}
	return string(append(b, lo...))
}

func (s *server) pickMs(span [2]float64) float64 {
	if span[1] <= span[0] {
		return span[0]
	}
	return span[0] + (span[1]-span[0])*s.rng.Float64()
}

func (s *server) schedule(delay time.Duration, ev *event) {
	ev.due = s.mono() + int64(delay)
	h := &s.timers
	if ev.kind != evAnswer {
		h = &s.slow
	}
	heap.Push(h, ev)
	if (*h)[0] == ev {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *server) serve() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.connections++
		c := &conn{
			s: s, nc: nc, id: fmt.Sprintf("sim-%d-%d", s.pid, s.connections),
			pend: map[uint32]*pending{}, lastHeard: s.mono(),
			wake: make(chan struct{}, 1), done: make(chan struct{}),
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go c.writer()
		go c.reader()
	}
}

// closeConn ends a session (s.mu held): what it still has queued goes out, then the
// socket closes; its unanswered deliver_sm go to another session, or wait for a bind.
func (s *server) closeConn(c *conn) {
	if c.closed {
		return
	}
	c.closed = true
	delete(s.conns, c)
	for i, x := range s.sessions {
		if x == c {
			s.sessions = append(s.sessions[:i], s.sessions[i+1:]...)
			break
		}
	}
	c.bucket, c.probe, c.unbind = nil, nil, nil
	var lost []*delivery
	for _, ref := range c.fifo[c.fifoHead:] {
		if p := c.pend[ref.seq]; p == ref.p {
			lost = append(lost, p.d)
		}
	}
	c.pend, c.fifo, c.fifoHead = nil, nil, 0
	c.outMu.Lock()
	c.closing = true
	c.outMu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.signal()
	for _, d := range lost {
		c.inFlight--
		s.stats.sessionLost++
		s.enqueue(d)
	}
}

func (s *server) dispatch(c *conn, cmd, status, seq uint32, body []byte) {
	if cmd&respBit != 0 {
		if p := c.pend[seq]; p != nil {
			delete(c.pend, seq)
			s.answered(c, p, status)
		}
		return
	}
	switch cmd {
	case cmdEnquireLink:
		c.respond(cmd, esmeROK, seq, nil)
	case cmdUnbind:
		c.respond(cmd, esmeROK, seq, nil)
		s.closeConn(c)
	case cmdBindTRX:
		if s.cfg.noTransceiver {
			c.nack(seq, esmeRINVCMDID)
		} else {
			s.onBind(c, cmd, seq, body)
		}
	case cmdBindRX, cmdBindTX:
		s.onBind(c, cmd, seq, body)
	default:
		switch {
		case c.bindType == "":
			c.nack(seq, esmeRINVBNDSTS)
		case cmd != cmdSubmitSM:
			c.nack(seq, esmeRINVCMDID)
		case !c.canTransmit():
			c.respond(cmd, esmeRINVBNDSTS, seq, nil)
		case s.stopping:
			c.respond(cmd, esmeRSYSERR, seq, nil)
		default:
			s.onSubmit(c, seq, body)
		}
	}
}

func (s *server) onBind(c *conn, cmd, seq uint32, body []byte) {
	if c.bindType != "" {
		c.respond(cmd, esmeRALYBND, seq, nil)
		return
	}
	// BindRequest.parse: three C-Octet strings (the rest of the body when unterminated),
	// then at least interface_version, addr_ton, addr_npi.
	i, fields := 0, [3][]byte{}
	for k := 0; k < 3; k++ {
		j := i
		for j < len(body) && body[j] != 0 {
			j++
		}
		fields[k] = body[i:j]
		if j < len(body) {
			j++
		}
		i = j
	}
	if len(body) < i+3 {
		c.respond(cmd, esmeRBINDFAIL, seq, nil)
		return
	}
	if s.stopping || s.stopped || s.cfg.refuseBinds != 0 {
		status := s.cfg.refuseBinds
		if status == 0 {
			status = esmeRBINDFAIL
		}
		c.respond(cmd, status, seq, nil)
		return
	}
	c.systemID = latin1(fields[0])
	c.bindType = map[uint32]string{cmdBindRX: "RX", cmdBindTX: "TX", cmdBindTRX: "TRX"}[cmd]
	s.sessions = append(s.sessions, c)
	c.respond(cmd, esmeROK, seq, cstring(s.cfg.systemID))
	if c.canReceive() {
		s.pump(c.systemID)
	}
}

func cstring(v string) []byte {
	b := make([]byte, 0, len(v)+1)
	for _, r := range v { // Python: .encode("ascii", "replace")
		if r < 0x80 {
			b = append(b, byte(r))
		} else {
			b = append(b, '?')
		}
	}
	return append(b, 0)
}

func (s *server) onSubmit(c *conn, seq uint32, body []byte) {
	cfg := s.cfg
	sm, ok := decodeSubmit(body)
	if !ok {
		c.respond(cmdSubmitSM, esmeRSYSERR, seq, nil)
		return
	}
	now := time.Now()
	nowMs := now.UnixMilli()
	admitted := true
	if cfg.throttleAbovePerS > 0 {
		if c.bucket == nil {
			c.bucket = admission(cfg.throttleAbovePerS)
		}
		admitted = c.bucket.tryTake(float64(s.mono()) / 1e9)
	}
	validity := lossyUTF8(sm.validity)
	validUntil, hasValid, valid := parseTime(validity, nowMs)
	var status uint32
	messageID := ""
	dropped := false
	switch {
	case !admitted:
		status = esmeRTHROTTLED
	case !valid:
		status = esmeRINVEXPIRY
	case cfg.failureRate > 0 && s.rng.Float64() < cfg.failureRate:
		status = esmeRSYSERR
	default:
		status = esmeROK
		messageID = s.newID()
		dropped = cfg.dropResponseRate > 0 && s.rng.Float64() < cfg.dropResponseRate
	}
	src, dst := lossyUTF8(sm.src), lossyUTF8(sm.dst)
	s.record(nowMs, c, src, dst, &sm, messageID, status, dropped, validity, validUntil, hasValid)

	if status == esmeRTHROTTLED {
		c.respond(cmdSubmitSM, status, seq, nil) // an overloaded SMSC answers at once
		return
	}
	latency := time.Duration(s.pickMs(cfg.latency) * float64(time.Millisecond))
	if status != esmeROK {
		s.answerLater(c, seq, latency, "", status)
		return
	}
	if dropped { // the answer is withheld, then comes (too late) as an error
		s.schedule(time.Duration(cfg.dropHoldMs*float64(time.Millisecond)),
			&event{kind: evAnswer, c: c, seq: seq, status: esmeRSYSERR})
	}
	if sm.registered&0x03 != 0 {
		job := &receiptJob{
			systemID: c.systemID, pref: c, messageID: messageID, atMs: nowMs,
			validUntil: validUntil, hasValid: hasValid, registered: sm.registered,
			src: src, dst: dst, srcTon: sm.srcTon, srcNpi: sm.srcNpi, dstTon: sm.dstTon,
			dstNpi: sm.dstNpi, preview: receiptPreview(sm.shortMessage, sm.esmClass, sm.coding),
		}
		if cfg.receiptBeforeResponse > 0 && s.rng.Float64() < cfg.receiptBeforeResponse {
			s.receiptDue(job) // written now, ahead of the response
		} else {
			delay := latency + time.Duration(s.pickMs(cfg.receiptDelay)*float64(time.Millisecond))
			s.schedule(delay, &event{kind: evReceipt, job: job})
		}
	}
	if !dropped {
		s.answerLater(c, seq, latency, messageID, esmeROK)
	}
}

func (s *server) answerLater(c *conn, seq uint32, delay time.Duration, messageID string, status uint32) {
	if delay <= 0 {
		s.answer(c, seq, messageID, status)
		return
	}
	s.schedule(delay, &event{kind: evAnswer, c: c, seq: seq, msgID: messageID, status: status})
}

func (s *server) answer(c *conn, seq uint32, messageID string, status uint32) {
	// No body with an error status (SMPP 3.4, 4.4.2); a no-op on a closed session.
	if status == esmeROK && messageID != "" {
		var b [40]byte
		body := append(append(b[:0], messageID...), 0)
		c.respond(cmdSubmitSM, status, seq, body)
		return
	}
	c.respond(cmdSubmitSM, status, seq, nil)
}

// record logs one submit_sm: the JSON line of smsc_sim's SubmitRecord.to_json().
func (s *server) record(atMs int64, c *conn, src, dst string, sm *submitSM, messageID string,
	status uint32, dropped bool, validity string, validUntil int64, hasValid bool) {
	s.submitCount++
	if s.cfg.logPath == "" && s.cfg.keepSubmits <= 0 {
		return
	}
	start := len(s.logBuf)
	b := s.logBuf
	b = append(b, `{"at_ms": `...)
	b = strconv.AppendInt(b, atMs, 10)
	b = append(b, `, "session_id": `...)
	b = appendPyJSONString(b, c.id)
	b = append(b, `, "system_id": `...)
	b = appendPyJSONString(b, c.systemID)
	b = append(b, `, "source": `...)
	b = appendPyJSONString(b, src)
	b = append(b, `, "source_ton": `...)
	b = strconv.AppendUint(b, uint64(sm.srcTon), 10)
	b = append(b, `, "source_npi": `...)
	b = strconv.AppendUint(b, uint64(sm.srcNpi), 10)
	b = append(b, `, "destination": `...)
	b = appendPyJSONString(b, dst)
	b = append(b, `, "dest_ton": `...)
	b = strconv.AppendUint(b, uint64(sm.dstTon), 10)
	b = append(b, `, "dest_npi": `...)
	b = strconv.AppendUint(b, uint64(sm.dstNpi), 10)
	b = append(b, `, "data_coding": `...)
	b = strconv.AppendUint(b, uint64(sm.coding), 10)
	b = append(b, `, "esm_class": `...)
	b = strconv.AppendUint(b, uint64(sm.esmClass), 10)
	b = append(b, `, "registered_delivery": `...)
	b = strconv.AppendUint(b, uint64(sm.registered), 10)
	b = append(b, `, "short_message": "`...)
	for _, x := range sm.shortMessage {
		b = append(b, hexDigits[x>>4], hexDigits[x&0xF])
	}
	b = append(b, `", "message_id": `...)
	if messageID == "" {
		b = append(b, "null"...)
	} else {
		b = appendPyJSONString(b, messageID)
	}
	b = append(b, `, "status": `...)
	b = strconv.AppendUint(b, uint64(status), 10)
	if dropped {
		b = append(b, `, "dropped": true`...)
	} else {
		b = append(b, `, "dropped": false`...)
	}
	b = append(b, `, "validity_period": `...)
	b = appendPyJSONString(b, validity)
	b = append(b, `, "valid_until_ms": `...)
	if hasValid {
		b = strconv.AppendInt(b, validUntil, 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, "}\n"...)
	if k := s.cfg.keepSubmits; k > 0 {
		line := string(b[start : len(b)-1])
		if len(s.ring) < k {
			s.ring = append(s.ring, line)
		} else {
			s.ring[s.ringHead] = line
			s.ringHead = (s.ringHead + 1) % k
		}
	}
	if s.cfg.logPath == "" {
		b = b[:start]
	}
	s.logBuf = b
}

// ── receipts and MO: store and forward ───────────────────────────────────────

func (s *server) receiptDue(j *receiptJob) {
	nowMs := time.Now().UnixMilli()
	var state string
	if j.hasValid && nowMs >= j.validUntil {
		state = "EXPIRED" // its validity ran out before it could be delivered
	} else {
		cum := s.cfg.outcomeCum
		x := s.rng.Float64() * cum[len(cum)-1]
		i := sort.Search(len(cum)-1, func(i int) bool { return cum[i] > x })
		state = s.cfg.outcomeNames[i]
	}
	if j.registered&0x03 == 2 && state == "DELIVRD" {
		return // receipt asked for failures only
	}
	dlvrd := "000"
	if state == "DELIVRD" {
		dlvrd = "001"
	}
	errCode, ok := errorCodes[state]
	if !ok {
		errCode = "000"
	}
	messageID := j.messageID
	if s.cfg.receiptIDsDecimal {
		if n, ok := new(big.Int).SetString(messageID, 16); ok {
			messageID = n.String()
		}
	}
	text := make([]byte, 0, 128)
	text = append(text, "id:"...)
	text = append(text, messageID...)
	text = append(text, " sub:001 dlvrd:"...)
	text = append(text, dlvrd...)
	text = append(text, " submit date:"...)
	text = append(text, smsDate(j.atMs)...)
	text = append(text, " done date:"...)
	text = append(text, smsDate(nowMs)...)
	text = append(text, " stat:"...)
	text = append(text, state...)
	text = append(text, " err:"...)
	text = append(text, errCode...)
	text = append(text, " text:"...)
	text = append(text, j.preview...)
	if s.cfg.receiptsAsDataSM {
		body := dataBody(j.dst, j.dstTon, j.src, j.srcTon, 0x04, 0,
			tlv{tlvReceiptedID, append([]byte(messageID), 0)},
			tlv{tlvMessageState, []byte{stateCodes[state]}},
			tlv{tlvPayload, text})
		s.enqueue(&delivery{systemID: j.systemID, pref: j.pref, body: body, cmd: cmdDataSM})
		return
	}
	body := deliverBody(j.dst, j.dstTon, j.dstNpi, j.src, j.srcTon, j.srcNpi, 0x04, 0, text,
		tlv{tlvReceiptedID, append([]byte(messageID), 0)},
		tlv{tlvMessageState, []byte{stateCodes[state]}})
	s.enqueue(&delivery{systemID: j.systemID, pref: j.pref, body: body})
}

const gsmASCIISafe = " !\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\r"

func moAddr(a string) (string, byte, byte) {
	if strings.HasPrefix(a, "+") {
		return a[1:], 1, 1
	}
	digits := a != ""
	for _, r := range a {
		if r < '0' || r > '9' {
			digits = false
			break
		}
	}
	if digits {
		return a, 1, 1
	}
	return a, 5, 0
}

var errNoReceiver = errors.New("no bound session can receive")

// injectMO queues an MO deliver_sm for the first bound session that can receive.
func (s *server) injectMO(source, destination, text string) (string, error) {
	var peer *conn
	for _, c := range s.sessions {
		if c.canReceive() {
			peer = c
			break
		}
	}
	if peer == nil {
		return "", errNoReceiver
	}
	moID := s.newID()
	var body []byte
	var coding byte
	safe := true
	for _, r := range text {
		if !strings.ContainsRune(gsmASCIISafe, r) {
			safe = false
			break
		}
	}
	if safe {
		body = []byte(text)
	} else {
		coding = 8
		for _, r := range text {
			if r >= 0x10000 {
				r -= 0x10000
				hi, lo := 0xD800+(r>>10), 0xDC00+(r&0x3FF)
				body = append(body, byte(hi>>8), byte(hi), byte(lo>>8), byte(lo))
			} else {
				body = append(body, byte(r>>8), byte(r))
			}
		}
	}
	src, srcTon, srcNpi := moAddr(source)
	dst, dstTon, dstNpi := moAddr(destination)
	tlvs := []tlv{{tlvReceiptedID, append([]byte(moID), 0)}}
	if len(body) > 254 {
		tlvs, body = append(tlvs, tlv{tlvPayload, body}), nil
	}
	d := deliverBody(src, srcTon, srcNpi, dst, dstTon, dstNpi, 0, coding, body, tlvs...)
	s.enqueue(&delivery{systemID: peer.systemID, pref: peer, body: d})
	return moID, nil
}

func (s *server) enqueue(d *delivery) {
	q := s.outbox[d.systemID]
	if q == nil {
		q = &deque{}
		s.outbox[d.systemID] = q
	}
	q.pushBack(d)
	s.pump(d.systemID)
}

// receiver: the session to deliver on: the preferred one if it has room, else the least busy
// (with deliverAnyBind: the next one round-robin that has room).
func (s *server) receiver(systemID string, pref *conn) *conn {
	window := s.cfg.deliverWindow
	if !s.cfg.deliverAnyBind && pref != nil && !pref.closed && pref.bindType != "" &&
		pref.systemID == systemID && pref.canReceive() && pref.inFlight < window {
		return pref
	}
	var best *conn
	var room []*conn
	for _, c := range s.sessions {
		if c.systemID == systemID && c.canReceive() && c.inFlight < window {
			room = append(room, c)
			if best == nil || c.inFlight < best.inFlight {
				best = c
			}
		}
	}
	if s.cfg.deliverAnyBind && len(room) > 0 {
		s.nextRecv++
		return room[s.nextRecv%len(room)]
	}
	return best
}

// pump writes what waits for systemID on its receiving sessions while they have room.
func (s *server) pump(systemID string) {
	if s.stopped || s.stopping {
		return // kept for the next bind, like a real SMSC
	}
	q := s.outbox[systemID]
	if q == nil {
		return
	}
	deadline := s.mono() + int64(s.cfg.deliverTimeout)
	for q.size > 0 {
		c := s.receiver(systemID, q.front().pref)
		if c == nil {
			return
		}
		d := q.popFront()
		p := &pending{kind: pendDeliver, d: d, deadline: deadline}
		cmd := d.cmd
		if cmd == 0 {
			cmd = cmdDeliverSM
		}
		seq := c.request(cmd, d.body, p)
		c.fifo = append(c.fifo, pendRef{seq, p})
		c.inFlight++
		d.attempts++
		s.stats.deliveriesSent++
	}
}

// answered: the ESME's answer to one of our requests.
func (s *server) answered(c *conn, p *pending, status uint32) {
	switch p.kind {
	case pendProbe:
		if c.probe == p {
			c.probe = nil
		}
		return
	case pendUnbind:
		if c.unbind == p {
			c.unbind = nil
		}
		return
	}
	c.inFlight--
	switch status {
	case esmeROK:
		s.stats.delivered++
	case esmeRXPAPPN:
		s.stats.givenUp++
	default:
		s.stats.refused++
		s.retryLater(p.d)
	}
	s.pump(p.d.systemID)
}

func (s *server) retryLater(d *delivery) {
	s.retrying++
	s.schedule(s.cfg.redeliver, &event{kind: evRetry, d: d})
}

func (s *server) fire(ev *event) {
	switch ev.kind {
	case evAnswer:
		s.answer(ev.c, ev.seq, ev.msgID, ev.status)
	case evReceipt:
		s.receiptDue(ev.job)
	case evRetry:
		s.retrying--
		s.enqueue(ev.d)
	}
}

func (s *server) timerLoop() {
	t := time.NewTimer(time.Hour)
	for {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return
		}
		now := s.mono()
		for len(s.timers) > 0 && s.timers[0].due <= now+int64(timerSlack) {
			s.fire(heap.Pop(&s.timers).(*event))
		}
		if len(s.slow) > 0 && s.slow[0].due <= now && now-s.lastSlow >= int64(deliveryTick) {
			s.lastSlow = now
			for len(s.slow) > 0 && s.slow[0].due <= now {
				s.fire(heap.Pop(&s.slow).(*event))
			}
		}
		wait := time.Hour
		if len(s.timers) > 0 {
			wait = time.Duration(s.timers[0].due - now)
		}
		if len(s.slow) > 0 {
			due := s.slow[0].due
			if next := s.lastSlow + int64(deliveryTick); next > due {
				due = next
			}
			if d := time.Duration(due - now); d < wait {
				wait = d
			}
		}
		if wait < timerSlack {
			wait = timerSlack
		}
		s.kick()
		s.mu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-s.wake:
		}
	}
}

// housekeeping: deliver_sm without an answer in time, enquire_link to silent ESMEs.
func (s *server) housekeeping() {
	for range time.Tick(tickEvery) {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return
		}
		now := s.mono()
		for c := range s.conns {
			for c.fifoHead < len(c.fifo) && c.fifo[c.fifoHead].p.deadline <= now {
				ref := c.fifo[c.fifoHead]
				c.fifo[c.fifoHead] = pendRef{}
				c.fifoHead++
				if c.pend[ref.seq] == ref.p {
					delete(c.pend, ref.seq)
					c.inFlight--
					s.stats.unanswered++
					s.retryLater(ref.p.d)
				}
			}
			if c.fifoHead > 1024 && c.fifoHead*2 > len(c.fifo) {
				c.fifo = append(c.fifo[:0], c.fifo[c.fifoHead:]...)
				c.fifoHead = 0
			}
			if c.unbind != nil && c.unbind.deadline <= now {
				c.unbind = nil
			}
			if c.probe != nil {
				if c.probe.deadline <= now {
					log.Printf("smsc-bench/%s: enquire_link unanswered, dropping the session", c.id)
					s.closeConn(c)
				}
				continue
			}
			if now-c.lastHeard >= int64(s.cfg.enquireLink) {
				c.probe = &pending{kind: pendProbe, deadline: now + int64(responseTimeout)}
				c.request(cmdEnquireLink, nil, c.probe)
			}
		}
		s.kick()
		s.mu.Unlock()
	}
}

func (s *server) logFlusher(f *os.File, stop chan struct{}) {
	t := time.NewTicker(s.cfg.logFlush)
	defer t.Stop()
	var buf []byte
	for {
		select {
		case <-t.C:
		case <-stop:
		}
		s.mu.Lock()
		buf, s.logBuf = s.logBuf, buf[:0]
		s.mu.Unlock()
		if len(buf) > 0 {
			if _, err := f.Write(buf); err != nil {
				log.Printf("smsc-bench: writing the log: %v", err)
			}
		}
		select {
		case <-stop:
			return
		default:
		}
	}
}

// stop: refuse new work, unbind every session (answer awaited at most 2 s), close.
func (s *server) stop() {
	s.mu.Lock()
	s.stopping = true
	s.ln.Close()
	var waiting []*conn
	deadline := s.mono() + int64(2*time.Second)
	for c := range s.conns {
		c.unbind = &pending{kind: pendUnbind, deadline: deadline}
		c.request(cmdUnbind, nil, c.unbind)
		waiting = append(waiting, c)
	}
	s.kick()
	s.mu.Unlock()
	for s.mono() < deadline {
		s.mu.Lock()
		busy := false
		for _, c := range waiting {
			if !c.closed && c.unbind != nil {
				busy = true
			}
		}
		s.mu.Unlock()
		if !busy {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	for c := range s.conns {
		s.closeConn(c)
	}
	s.stopped = true
	s.kick()
	s.mu.Unlock()
	for _, c := range waiting {
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
	}
}

// ── control channel ──────────────────────────────────────────────────────────

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(body)
}

// pyStr: Python's str() of a JSON value (strings as they are).
func pyStr(v interface{}) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		if x {
			return "True"
		}
		return "False"
	case nil:
		return "None"
	case json.Number:
		return x.String()
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

func (s *server) control() http.Handler {
	mux := http.NewServeMux()
	get := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				http.Error(w, "405: Method Not Allowed", http.StatusMethodNotAllowed)
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("/health", get(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		queued := 0
		for _, q := range s.outbox {
			queued += q.size
		}
		inFlight := 0
		for c := range s.conns {
			inFlight += c.inFlight
		}
		st := s.stats
		body := fmt.Sprintf(`{"sessions": %d, "submits": %d, "waiting": %d, "deliveries_sent": %d, `+
			`"delivered": %d, "refused": %d, "unanswered": %d, "session_lost": %d, "given_up": %d}`,
			len(s.sessions), s.submitCount, queued+inFlight+s.retrying, st.deliveriesSent,
			st.delivered, st.refused, st.unanswered, st.sessionLost, st.givenUp)
		s.mu.Unlock()
		writeJSON(w, 200, []byte(body))
	}))
	mux.HandleFunc("/submits", get(func(w http.ResponseWriter, r *http.Request) {
		since := 0
		if v := r.URL.Query().Get("since"); v != "" {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				http.Error(w, "500 Internal Server Error", 500)
				return
			}
			since = n
		}
		s.mu.Lock()
		rows := make([]string, 0, len(s.ring))
		rows = append(rows, s.ring[s.ringHead:]...)
		rows = append(rows, s.ring[:s.ringHead]...)
		total := s.submitCount
		s.mu.Unlock()
		skip := since - (total - len(rows))
		if skip < 0 {
			skip = 0
		}
		if skip > len(rows) {
			skip = len(rows)
		}
		body := fmt.Sprintf(`{"total": %d, "submits": [%s]}`, total, strings.Join(rows[skip:], ", "))
		writeJSON(w, 200, []byte(body))
	}))
	mux.HandleFunc("/mo", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "405: Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		var req map[string]interface{}
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.UseNumber()
		bad := dec.Decode(&req) != nil || req == nil
		var from, to, text interface{}
		if !bad {
			var ok1, ok2, ok3 bool
			from, ok1 = req["from"]
			to, ok2 = req["to"]
			text, ok3 = req["text"]
			bad = !(ok1 && ok2 && ok3)
		}
		if bad {
			writeJSON(w, 400, []byte(`{"error": "want JSON {from, to, text}"}`))
			return
		}
		s.mu.Lock()
		id, err := s.injectMO(pyStr(from), pyStr(to), pyStr(text))
		s.kick()
		s.mu.Unlock()
		if err != nil {
			writeJSON(w, 409, append(appendPyJSONString([]byte(`{"error": `), err.Error()), '}'))
			return
		}
		writeJSON(w, 200, append(appendPyJSONString([]byte(`{"ok": true, "id": `), id), '}'))
	})
	return mux
}

// ── main ─────────────────────────────────────────────────────────────────────

// watchParent: stop (like SIGTERM) once the parent named by RASSYLKA_PARENT_PID is gone
// (connectors.parent.exit_with_parent).
func watchParent(stop chan<- os.Signal) {
	v := os.Getenv("RASSYLKA_PARENT_PID")
	parent, err := strconv.Atoi(v)
	if err != nil || parent != os.Getppid() {
		return
	}
	go func() {
		for os.Getppid() == parent {
			time.Sleep(time.Second)
		}
		stop <- syscall.SIGTERM
	}()
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if os.Getenv("GOMAXPROCS") == "" {
		// One P: no cross-thread hand-offs and spinning between the reader, writer and
		// timer goroutines. Over 30k submit_sm/s still fit in it.
		runtime.GOMAXPROCS(1)
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "smsc-bench:", err)
		os.Exit(2)
	}
	seed := cfg.seed
	if !cfg.seeded {
		seed = time.Now().UnixNano()
	}
	s := &server{
		cfg: cfg, t0: time.Now(), pid: os.Getpid(), wake: make(chan struct{}, 1),
		rng: rand.New(rand.NewSource(seed)), conns: map[*conn]struct{}{},
		outbox: map[string]*deque{}, nextHi: uint64(time.Now().UnixMilli()),
	}
	var logFile *os.File
	if cfg.logPath != "" {
		logFile, err = os.OpenFile(cfg.logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatalf("smsc-bench: %v", err)
		}
	}
	s.ln, err = net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port)))
	if err != nil {
		log.Fatalf("smsc-bench: %v", err)
	}
	port := s.ln.Addr().(*net.TCPAddr).Port // port 0 picks a free one: say which
	controlPort := -1
	var httpSrv *http.Server
	if cfg.controlPort >= 0 {
		cl, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.controlPort)))
		if err != nil {
			log.Fatalf("smsc-bench: control channel: %v", err)
		}
		controlPort = cl.Addr().(*net.TCPAddr).Port
		httpSrv = &http.Server{Handler: s.control(), ReadHeaderTimeout: 10 * time.Second}
		go httpSrv.Serve(cl)
	}
	flushStop := make(chan struct{})
	flushDone := make(chan struct{})
	if logFile != nil {
		go func() {
			s.logFlusher(logFile, flushStop)
			close(flushDone)
		}()
	} else {
		close(flushDone)
	}
	go s.serve()
	go s.timerLoop()
	go s.housekeeping()

	control := ""
	if controlPort >= 0 {
		control = fmt.Sprintf(" control http://%s:%d", cfg.host, controlPort)
	}
	fmt.Printf("smsc-bench listening on %s:%d%s\n", cfg.host, port, control)

	if path := os.Getenv("SMSC_BENCH_CPUPROFILE"); path != "" { // for tuning: go tool pprof
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	watchParent(sig)
	<-sig
	go func() { // a second signal: leave at once
		<-sig
		os.Exit(1)
	}()
	s.stop()
	if httpSrv != nil {
		httpSrv.Close()
	}
	close(flushStop)
	<-flushDone
	if logFile != nil {
		logFile.Close()
	}
}
