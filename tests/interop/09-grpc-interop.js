// 09-grpc-interop: an independent gRPC client (@grpc/grpc-js, proto loaded at
// run time from proto/im.proto) calls Auth.SignUp and Auth.Login on the real
// logic binary.  It proves the wire format, not the rules (08 covers those).
//
// Usage (ctest passes them): node 09-grpc-interop.js <logic binary> <proto/im.proto>
// Needs $IM_STATE_DIR/env from scripts/infra.sh (the database settings).
'use strict';

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const SECRET = 'it09-secret-0123456789abcdef-0123456789';

function loadInfraEnv() {
  const file = path.join(process.env.IM_STATE_DIR || '', 'env');
  const env = { ...process.env };
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (line && !line.startsWith('#') && eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  delete env.IM_JWT_SECRET;
  env.IM_QUEUE = `it09.${process.pid}`;
  return env;
}

// Starts logic on a free port; resolves with { child, port } once it logs it.
function startLogic(bin) {
  const child = spawn(bin, ['--grpc-listen', '127.0.0.1:0', '--jwt-secret', SECRET,
    '--password-cost', 'min'], { env: loadInfraEnv(), stdio: ['ignore', 'inherit', 'pipe'] });
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`logic did not report its port:\n${seen}`)),
      20000);
    child.stderr.on('data', (chunk) => {
      seen += chunk;
      process.stderr.write(chunk);
      const m = /logic: grpc listening on 127\.0\.0\.1:(\d+)/.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.on('exit', (code) => reject(new Error(`logic exited early with ${code}`)));
  });
}

function unary(client, method, req) {
  return new Promise((resolve, reject) => {
    client[method](req, { deadline: Date.now() + 10000 }, (err, resp) =>
      (err ? reject(err) : resolve(resp)));
  });
}

async function main() {
  const [bin, protoFile] = process.argv.slice(2);
  const def = protoLoader.loadSync(protoFile, { keepCase: true, longs: String, defaults: true });
  const im = grpc.loadPackageDefinition(def).im.v1;
  const { child, port } = await startLogic(bin);
  const stopped = new Promise((resolve) => child.on('exit', (code, sig) => resolve({ code, sig })));
  const auth = new im.Auth(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const username = `node_${process.pid}_${Date.now() % 100000}`;

  try {
    const reg = await unary(auth, 'SignUp', { username, password: 'password-from-node' });
    assert.match(reg.user_id, /^[1-9][0-9]*$/);

    const login = await unary(auth, 'Login', { username, password: 'password-from-node' });
    assert.equal(login.user_id, reg.user_id);
    const [, payload] = login.token.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
    assert.equal(claims.sub, reg.user_id);
    assert.equal(claims.name, username);
    assert.equal(Number(login.expires_at_ms), claims.exp * 1000);

    await assert.rejects(unary(auth, 'SignUp', { username, password: 'password-from-node' }),
      (err) => err.code === grpc.status.ALREADY_EXISTS && err.details.startsWith('username_taken: '));
    await assert.rejects(unary(auth, 'Login', { username, password: 'wrong-password' }),
      (err) => err.code === grpc.status.UNAUTHENTICATED &&
        err.details.startsWith('bad_credentials: '));
    console.log('ok   grpc-js SignUp, Login and error statuses against logic');
  } finally {
    auth.close();
    child.kill('SIGTERM');
  }
  const { code } = await stopped;
  assert.equal(code, 0, 'logic did not exit cleanly on SIGTERM');
}

main().catch((err) => {
  console.error('FAIL', err);
  process.exit(1);
});
