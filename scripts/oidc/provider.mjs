// Local OpenID Connect provider for Nephele's test bed.
//
// NOT FOR PRODUCTION. It runs node-oidc-provider (pinned in package.json)
// with one static confidential client, a file of test accounts that is
// re-read on every lookup, and a minimal password login form.
//
// Started by `scripts/testbed up`; configured through the environment:
//   OIDC_PROVIDER_PORT   port to listen on (default 9000), bound to 127.0.0.1
//   OIDC_PROVIDER_HOST   address to bind (default 127.0.0.1)
//   OIDC_ACCOUNTS_FILE   JSON accounts file (default ./accounts.json)
//   OIDC_JWKS_FILE       private signing keys, created on first start
//                        (default <repo>/.testbed/oidc-jwks.json)
//   OIDC_CLIENT_ID / OIDC_CLIENT_SECRET  (default nephele / nephele-test-secret)

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');

const PORT = Number.parseInt(process.env.OIDC_PROVIDER_PORT || '9000', 10);
const HOST = process.env.OIDC_PROVIDER_HOST || '127.0.0.1';
const ISSUER = `http://127.0.0.1:${PORT}`;
const ACCOUNTS_FILE = resolve(process.env.OIDC_ACCOUNTS_FILE || join(here, 'accounts.json'));
const JWKS_FILE = resolve(process.env.OIDC_JWKS_FILE || join(repoRoot, '.testbed', 'oidc-jwks.json'));
const CLIENT_ID = process.env.OIDC_CLIENT_ID || 'nephele';
const CLIENT_SECRET = process.env.OIDC_CLIENT_SECRET || 'nephele-test-secret';

// Ports on which the Django dev server / live test server may run.
const RP_PORTS = [];
for (let p = 8000; p <= 8010; p += 1) RP_PORTS.push(p);
for (let p = 8765; p <= 8799; p += 1) RP_PORTS.push(p);
const RP_ORIGINS = RP_PORTS.flatMap((p) => [`http://127.0.0.1:${p}`, `http://localhost:${p}`]);

// ---------------------------------------------------------------- helpers

function log(...args) {
  // One line per event, on stdout (redirected to .testbed/oidc.log).
  console.log(new Date().toISOString(), ...args);
}

function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function loadOrCreateJwks(file) {
  try {
    const jwks = JSON.parse(readFileSync(file, 'utf8'));
    if (Array.isArray(jwks.keys) && jwks.keys.length > 0) return jwks;
  } catch (err) {
    if (err.code !== 'ENOENT') throw new Error(`cannot read ${file}: ${err.message}`);
  }
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const jwks = {
    keys: [{ ...jwk, kid: `testbed-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' }],
  };
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
  log(`generated new RS256 signing key ${jwks.keys[0].kid} in ${file}`);
  return jwks;
}

// Accounts are read from disk on every call so that tests may edit the file
// between logins (e.g. to check that changed names are picked up).
function readAccounts() {
  try {
    const data = JSON.parse(readFileSync(ACCOUNTS_FILE, 'utf8'));
    return data && typeof data === 'object' ? data : {};
  } catch (err) {
    log(`cannot read accounts file ${ACCOUNTS_FILE}: ${err.message}`);
    return {};
  }
}

function lookupAccount(id) {
  const accounts = readAccounts();
  if (typeof id !== 'string' || !Object.hasOwn(accounts, id)) return undefined;
  const entry = accounts[id];
  return entry && typeof entry === 'object' ? entry : undefined;
}

async function findAccount(ctx, id) {
  if (!lookupAccount(id)) return undefined;
  return {
    accountId: id,
    // Re-read on every claims() call too: the token and userinfo endpoints
    // may run long after findAccount.
    async claims() {
      const { claims = {} } = lookupAccount(id) || {};
      return { ...claims, sub: id };
    },
  };
}

// ---------------------------------------------------------------- HTML

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${escapeHtml(title)}</title>
  <style>
    body{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}
    label{display:block;margin-top:1rem;font-weight:600}
    input{display:block;width:100%;box-sizing:border-box;padding:.4rem;margin-top:.25rem}
    button{margin-top:1.25rem;padding:.5rem 1rem}
    .error{color:#a00;border:1px solid #a00;padding:.5rem}
  </style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>`;
}

function loginPage({ uid, login = '', error, clientId }) {
  const action = `/interaction/${encodeURIComponent(uid)}/login`;
  return page('Test IdP login', `
  <h1>Test IdP login</h1>
  <p>Sign in to continue to <strong>${escapeHtml(clientId)}</strong>.</p>
  ${error ? `<p class="error" role="alert" id="login-error">${escapeHtml(error)}</p>` : ''}
  <form method="post" action="${escapeHtml(action)}" autocomplete="off">
    <label for="login">Login</label>
    <input id="login" name="login" type="text" value="${escapeHtml(login)}" required autofocus
      ${error ? 'aria-describedby="login-error" aria-invalid="true"' : ''}>
    <label for="password">Password</label>
    <input id="password" name="password" type="password" required
      ${error ? 'aria-describedby="login-error" aria-invalid="true"' : ''}>
    <button type="submit">Sign in</button>
  </form>`);
}

// ---------------------------------------------------------------- provider

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    client_name: 'Nephele (test bed)',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // The provider accepts client_secret_basic as well as client_secret_post
    // for a client registered with either of the two.
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: 'RS256',
    redirect_uris: RP_ORIGINS.map((o) => `${o}/oidc/callback/`),
    post_logout_redirect_uris: RP_ORIGINS.map((o) => `${o}/`),
  }],
  jwks: loadOrCreateJwks(JWKS_FILE),
  findAccount,
  scopes: ['openid', 'email', 'profile', 'groups', 'entitlements', 'posix'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    groups: ['groups'],
    entitlements: ['eduperson_entitlement'],
    posix: ['uid'],
  },
  responseTypes: ['code'],
  pkce: { required: () => false },
  cookies: {
    // Test-only, not secret. (State lives in memory: a restart ends sessions.)
    keys: ['nephele-testbed-cookie-key-not-secret'],
    // Distinct names: cookies ignore ports, so the portal on 127.0.0.1
    // shares this cookie jar.
    names: {
      session: 'testidp_session',
      interaction: 'testidp_interaction',
      resume: 'testidp_interaction_resume',
    },
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 3600,
    Session: 24 * 3600,
    Grant: 24 * 3600,
  },
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // No confirmation page: the form (which carries the xsrf token) is
      // submitted with logout=yes automatically; a button covers no-JS clients.
      async logoutSource(ctx, form) {
        const withLogout = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
        ctx.body = page('Signing out', `
  <h1>Signing out</h1>
  ${withLogout}
  <button type="submit" form="op.logoutForm">Sign out</button>
  <script>document.getElementById('op.logoutForm').submit();</script>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<h1>Signed out</h1><p>You have been signed out of the test IdP.</p>');
      },
    },
  },
  // First-party client: grant whatever it asks for, so no consent page.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const accountId = oidc.account?.accountId || oidc.session.accountId;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (grant && (grant.accountId !== accountId || grant.clientId !== oidc.client.clientId)) {
      grant = undefined;
    }
    if (oidc.client.clientId !== CLIENT_ID) return grant;
    grant ||= new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId });
    const scopes = [...oidc.requestParamOIDCScopes];
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Test IdP error', `
  <h1>Test IdP error</h1>
  <dl>${Object.entries(out).map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join('')}</dl>`);
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

// Request log: one line per request.
provider.use(async (ctx, next) => {
  const started = Date.now();
  try {
    await next();
  } finally {
    log(`${ctx.method} ${ctx.originalUrl} -> ${ctx.status} (${Date.now() - started} ms)`);
  }
});

provider.on('server_error', (ctx, err) => log('server_error', err?.stack || err));
provider.on('grant.error', (ctx, err) => log('grant.error', err?.error || '', err?.error_description || err?.message || ''));
provider.on('authorization.error', (ctx, err) => log('authorization.error', err?.error || '', err?.error_description || err?.message || ''));
provider.on('userinfo.error', (ctx, err) => log('userinfo.error', err?.error || '', err?.error_description || err?.message || ''));
provider.on('end_session.error', (ctx, err) => log('end_session.error', err?.error || '', err?.error_description || err?.message || ''));

async function readForm(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function html(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

async function finish(ctx, result, { mergeWithLastSubmission }) {
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission });
  ctx.set('Cache-Control', 'no-store');
  ctx.redirect(returnTo);
  ctx.status = 303;
}

// Auto-grant everything requested (only reached if loadExistingGrant did not
// already cover the request).
async function autoConsent(ctx, details) {
  const { prompt: { details: missing = {} }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  // Keep the login result of the previous step (prompt=login consent).
  await finish(ctx, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const INTERACTION = /^\/interaction\/([^/]+)(\/login)?\/?$/;

provider.use(async (ctx, next) => {
  const m = INTERACTION.exec(ctx.path);
  if (!m) return next();
  const [, uid, isLogin] = m;
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
    const { prompt, params } = details;

    if (ctx.method === 'GET' && !isLogin) {
      if (prompt.name === 'login') {
        return html(ctx, 200, loginPage({ uid, login: params.login_hint, clientId: params.client_id }));
      }
      if (prompt.name === 'consent') return autoConsent(ctx, details);
      throw new errors.InvalidRequest(`unsupported prompt ${prompt.name}`);
    }

    if (ctx.method === 'POST' && isLogin) {
      const form = await readForm(ctx.req);
      const login = (form.get('login') || '').trim();
      const password = form.get('password') || '';
      const account = lookupAccount(login);
      if (!account || typeof account.password !== 'string' || account.password !== password) {
        log(`login failed for ${JSON.stringify(login)}`);
        return html(ctx, 401, loginPage({
          uid, login, clientId: params.client_id, error: 'Invalid login or password',
        }));
      }
      log(`login ok for ${JSON.stringify(login)}`);
      return finish(ctx, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    }

    ctx.status = 405;
    ctx.body = 'Method Not Allowed';
    return undefined;
  } catch (err) {
    if (err instanceof errors.SessionNotFound || err instanceof errors.InvalidRequest) {
      log(`interaction error: ${err.message} ${err.error_description || ''}`);
      return html(ctx, 400, page('Test IdP error', `
  <h1>Test IdP error</h1>
  <p>${escapeHtml(err.error_description || err.message)}</p>
  <p>Start the sign-in again from the application.</p>`));
    }
    throw err;
  }
});

const server = provider.listen(PORT, HOST, () => {
  log(`test OIDC provider ${ISSUER} listening on ${HOST}:${PORT}; accounts from ${ACCOUNTS_FILE}; keys from ${JWKS_FILE}`);
});
server.on('error', (err) => {
  log(`cannot listen on ${HOST}:${PORT}: ${err.message}`);
  process.exit(1);
});

function shutdown(signal) {
  log(`received ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
