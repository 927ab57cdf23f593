'use strict';
/*
 * What ctl_imapflow.js and guard_imapflow.js share: the line protocol to
 * their Python test (one line per event on stdout, "ERROR ..." and exit 1
 * on failure or when the whole run's deadline passes) and an imapflow
 * client logged in over implicit TLS to 127.0.0.1.
 */
const { ImapFlow } = require('imapflow');

/* Print one protocol line for the test. */
function say(line) {
    process.stdout.write(line + '\n');
}

/* Give up: report and exit non-zero. */
function fail(msg) {
    say('ERROR ' + msg);
    process.exit(1);
}

/* Fail the run when ms have passed (the timer does not keep node alive). */
function deadline(ms) {
    setTimeout(() => fail('deadline of ' + ms + ' ms passed'), ms).unref();
}

/* A connected, logged-in client (TLS, certificate not checked, no auto-IDLE). */
async function connect(port, user, pass) {
    const client = new ImapFlow({
        host: '127.0.0.1',
        port: Number(port),
        secure: true,
        tls: { rejectUnauthorized: false },
        auth: { user, pass },
        logger: false,
        disableAutoIdle: true
    });
    client.on('error', err => say('EVENT error ' + (err && err.message)));
    await client.connect();
    return client;
}

module.exports = { say, fail, deadline, connect };
