'use strict';
/*
 * imapgate test backend: WildDuck's real IMAP protocol engine (imap-core)
 * with the in-memory store that the wildduck npm package ships for its own
 * tests. No MongoDB or Redis is needed.
 *
 * This file only requires and configures WildDuck's modules; it contains no
 * code taken from WildDuck (which is EUPL-1.2).
 *
 * Usage: node server.js [PORT]
 *   PORT (or env WD_PORT), default 0 = pick a free port.
 *   Prints "READY <port>" on stdout once listening. SIGTERM/SIGINT stop it.
 *
 * Environment:
 *   WD_PORT=n            listen port when no argv port is given
 *   WD_HOST=addr         listen address (default 127.0.0.1)
 *   WD_PROXY=1           expect a HAProxy PROXY v1 line first (useProxy)
 *   WD_STARTTLS=1        keep WildDuck's default "Run STARTTLS first" refusal
 *                        of plaintext LOGIN (default: disableSTARTTLS is set)
 *   WD_DEBUG=1           log imap-core's protocol trace to stderr
 *
 * Signals: SIGTERM/SIGINT stop (imap-core sends "* BYE System shutdown" to
 * sessions still open after 1 s); SIGUSR2 drops every client connection with
 * a plain close and no BYE; SIGHUP drops them with a TCP reset. The listener
 * stays up after SIGUSR2/SIGHUP. SIGKILL is the crash case.
 *
 * Users (password for all: "pass"; only testuser really logs in):
 *   testuser     normal login, INBOX with a few messages
 *   ratelimited  LOGIN fails the way WildDuck's rate limiter fails it
 *                (NO [RateLimitedError] ...)
 *   badscope     LOGIN fails the way a wrong-scope password fails it
 *                (NO [InvalidAuthScope] ...)
 *   tempfail     the auth backend throws a plain error (NO [TEMPFAIL] ...)
 *   anything else: NO [AUTHENTICATIONFAILED] Invalid credentials
 */

const path = require('path');

const wdRoot = path.dirname(require.resolve('wildduck/package.json'));
const createTestServer = require(path.join(wdRoot, 'imap-core', 'test', 'test-server.js'));

const wdErrors = require(path.join(wdRoot, 'lib', 'errors.js'));

const MAX_PORT = 65535;

/* Parse the listen port from argv or env; exits on a bad value. */
function parsePort() {
    const raw = process.argv[2] !== undefined ? process.argv[2] : process.env.WD_PORT || '0';
    const port = Number(raw);
    if (!Number.isInteger(port) || port < 0 || port > MAX_PORT) {
        process.stderr.write(`server.js: bad port "${raw}"\n`);
        process.exit(2);
    }
    return port;
}

/* True when an env flag is set to a truthy value. */
function envFlag(name) {
    const v = (process.env[name] || '').toLowerCase();
    return v === '1' || v === 'true' || v === 'yes';
}

/* Build an auth error shaped like the ones WildDuck's user handler throws,
 * so imap-core's LOGIN handler formats the tagged NO itself. */
function wildduckAuthError(code, message) {
    const err = new Error(message);
    err.response = 'NO';
    err.responseCode = 403;
    err.code = code;
    return err;
}

const debug = envFlag('WD_DEBUG');
const stderrLogger = {
    info: (...a) => process.stderr.write('INFO ' + JSON.stringify(a.slice(1)) + '\n'),
    debug: (...a) => process.stderr.write('DEBUG ' + JSON.stringify(a.slice(1)) + '\n'),
    error: (...a) => process.stderr.write('ERROR ' + JSON.stringify(a.slice(1)) + '\n')
};

let server = null;

const options = {
    secure: false,
    /* Plaintext backend leg: accept LOGIN/AUTHENTICATE without STARTTLS,
     * as operators do behind a TLS proxy on a private network. */
    disableSTARTTLS: !envFlag('WD_STARTTLS'),
    useProxy: envFlag('WD_PROXY'),
    /* Same greeting as a real WildDuck deployment. */
    id: { name: 'WildDuck IMAP Server' },
    /* wildduck@1.46.1 on Node 20: without an explicit SNICallback a client
     * sending SNI (after STARTTLS) kills the handshake. Answer every name
     * with the default context. */
    SNICallback: (servername, cb) => cb(null, server ? server.secureContext.get('*') : null),
    logger: debug ? stderrLogger : false,
    maxMessage: 16 * 1024 * 1024
};

server = createTestServer(options);

/* imap-core reports every BAD (e.g. "SELECT not allowed now") and every auth
 * exception as a GELF record with a stack trace on stderr; keep the test
 * output readable unless WD_DEBUG is set. */
if (!debug) {
    wdErrors.gelf.handler = { emit: () => false };
}

/* The shipped test server logs through server.logger.debug in handlers; keep
 * it quiet unless asked (the logger option already handles it). */

/* onOpen results must carry an _id, otherwise FETCH throws and the process
 * dies. The memory notifier keys everything by mailbox path, so the path is
 * the id that makes notifications (EXISTS after APPEND) find the mailbox. */
const origOnOpen = server.onOpen;
server.onOpen = function (mailbox, session, callback) {
    return origOnOpen.call(this, mailbox, session, (err, data) => {
        if (!err && data && typeof data === 'object' && data._id === undefined) {
            data._id = mailbox;
        }
        callback(err, data);
    });
};

/* The test server calls addEntries(user, mailbox, entries, cb) (and once
 * addEntries(mailbox, user, entries, cb)), but the memory notifier takes
 * addEntries(mailbox, entries, cb). Drop whichever leading argument is not a
 * known mailbox. */
const notifier = server.notifier;
const origAddEntries = notifier.addEntries.bind(notifier);
notifier.addEntries = function (...args) {
    if (args.length >= 4) {
        const [a, b, entries, cb] = args;
        const mailbox = notifier.folders.has(b) || !notifier.folders.has(a) ? b : a;
        return origAddEntries(mailbox, entries, cb);
    }
    return origAddEntries(...args);
};

/* The test server fires notifications as fire(user, mailboxPath), but
 * imap-core treats any payload as a global trigger (LOGOUT/DROP) and then
 * ignores it, so EXISTS after APPEND would never reach other sessions or
 * IDLE. Drop a plain mailbox-name payload. */
const origFire = notifier.fire.bind(notifier);
notifier.fire = function (user, payload) {
    return origFire(user, typeof payload === 'string' ? undefined : payload);
};

/* Two of the shipped INBOX messages (uid 53 and 60) have no MIME tree, which
 * makes any FETCH of their body or size fail. Drop them so every message in
 * the INBOX is fetchable; four remain (uid 45, 49, 50, 52). */
const inbox = notifier.folders.get('INBOX');
if (inbox) {
    inbox.messages = inbox.messages.filter(m => m.mimeTree);
}

/* Special user names that reproduce WildDuck's non-standard LOGIN answers. */
const origOnAuth = server.onAuth;
server.onAuth = function (login, session, callback) {
    switch (login.username) {
        case 'ratelimited':
            return callback(wildduckAuthError('RateLimitedError', 'Authentication was rate limited'));
        case 'badscope':
            return callback(wildduckAuthError('InvalidAuthScope', 'Access to requested service disabled'));
        case 'tempfail':
            return callback(new Error('Database error'));
        default:
            return origOnAuth.call(this, login, session, callback);
    }
};

/* Protocol errors are logged by the test server on stdout; send them to
 * stderr so stdout carries only the READY line. */
server.removeAllListeners('error');
server.on('error', err => {
    process.stderr.write('server error: ' + (err && err.stack ? err.stack : String(err)) + '\n');
});

const host = process.env.WD_HOST || '127.0.0.1';
let stopping = false;

/* Stop listening, close sessions and exit; bounded by a hard timer. */
function stop(signal) {
    if (stopping) {
        return;
    }
    stopping = true;
    const hard = setTimeout(() => process.exit(0), 3000);
    hard.unref();
    server.close(() => process.exit(0));
    if (debug) {
        process.stderr.write(`stopping on ${signal}\n`);
    }
}

/* Drop every client connection without a BYE (FIN, or RST when reset is
 * true) while the listener stays up: the "backend cut" fault. */
function cutAll(reset) {
    let n = 0;
    for (const conn of server.connections) {
        const sock = conn._socket;
        if (sock && !sock.destroyed) {
            if (reset && typeof sock.resetAndDestroy === 'function') {
                sock.resetAndDestroy();
            } else {
                sock.destroy();
            }
            n++;
        }
    }
    if (debug) {
        process.stderr.write(`cut ${n} connection(s)${reset ? ' with RST' : ''}\n`);
    }
}

process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGUSR2', () => cutAll(false));
process.on('SIGHUP', () => cutAll(true));
process.on('SIGINT', () => stop('SIGINT'));

server.server.on('error', err => {
    process.stderr.write('listen error: ' + err.message + '\n');
    process.exit(1);
});

server.listen(parsePort(), host, () => {
    process.stdout.write(`READY ${server.server.address().port}\n`);
});
