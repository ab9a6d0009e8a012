// oidc-provider on loopback, configured for tower-oauth2's interop tests.
//
// Started by tests/interop.rs with PORT=0; prints `READY <port>` once it
// listens, then nothing else on stdout. Exits when stdin closes or on SIGTERM.
// The clients, endpoints and test helpers are listed in README.md beside it.

import http from 'node:http';

// stdout carries the one READY line; anything the provider logs goes to stderr.
console.log = console.error;
console.info = console.error;
import Provider, { errors } from 'oidc-provider';

const AUDIENCE = 'urn:tower-oauth2:api';
const RESOURCE_SCOPES = 'api.read api.write';

const clients = [
  { client_id: 'cc-basic', client_secret: 'basic-secret', token_endpoint_auth_method: 'client_secret_basic', grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'api.read api.write' },
  { client_id: 'cc-post', client_secret: 'post-secret', token_endpoint_auth_method: 'client_secret_post', grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'api.read api.write' },
  { client_id: 'cc-special', client_secret: 'p@ss:w/rd+&=% ~x', token_endpoint_auth_method: 'client_secret_basic', grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'api.read' },
  { client_id: 'cc-short', client_secret: 'short-secret', token_endpoint_auth_method: 'client_secret_basic', grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'api.read api.write' },
  { client_id: 'web-app', client_secret: 'web-secret', token_endpoint_auth_method: 'client_secret_basic', grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], redirect_uris: ['http://127.0.0.1/callback'], scope: 'openid offline_access api.read api.write' },
  { client_id: 'resource-server', client_secret: 'rs-secret', token_endpoint_auth_method: 'client_secret_basic', grant_types: [], response_types: [], redirect_uris: [] },
];

const ttlFor = (clientId) => (clientId === 'cc-short' ? 2 : 300);

// The default in-memory store is a small LRU: old tokens would vanish under
// load. This one keeps everything for the life of the process.
const store = new Map();
class MemoryAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload) { store.set(this.key(id), { ...payload }); }
  async find(id) { return store.get(this.key(id)); }
  async findByUid(uid) {
    for (const [key, value] of store) if (key.startsWith(`${this.model}:`) && value.uid === uid) return value;
    return undefined;
  }
  async findByUserCode(userCode) {
    for (const [key, value] of store) if (key.startsWith(`${this.model}:`) && value.userCode === userCode) return value;
    return undefined;
  }
  async consume(id) { const value = store.get(this.key(id)); if (value) value.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) { for (const [key, value] of store) if (value.grantId === grantId) store.delete(key); }
}

// Token endpoint counters, whether the request succeeded or not.
let stats = { token_requests: {}, token_requests_by_grant: {} };

function presentedClientId(ctx) {
  const auth = ctx.get('authorization');
  if (auth && auth.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
    const id = decoded.split(':')[0];
    try { return decodeURIComponent(id.replace(/\+/g, ' ')); } catch { return id; }
  }
  return ctx.oidc?.params?.client_id || ctx.request?.body?.client_id || 'unknown';
}

function countTokenRequest(ctx) {
  const client = ctx.oidc?.client?.clientId || presentedClientId(ctx);
  const grant = ctx.oidc?.params?.grant_type || ctx.request?.body?.grant_type || 'unknown';
  stats.token_requests[client] = (stats.token_requests[client] || 0) + 1;
  stats.token_requests_by_grant[grant] = (stats.token_requests_by_grant[grant] || 0) + 1;
}

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  adapter: MemoryAdapter,
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  scopes: ['openid', 'offline_access', 'api.read', 'api.write'],
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['interop-test-only'] },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  pkce: { required: () => true },
  ttl: {
    AccessToken: 300,
    AuthorizationCode: 60,
    ClientCredentials: (ctx, token, client) => ttlFor(client.clientId),
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // The resource server may introspect any token; a client may revoke its own.
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => AUDIENCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        if (resourceIndicator !== AUDIENCE) throw new errors.InvalidTarget();
        // By default unknown scopes are dropped; OfficeRnD (and this test)
        // rejects a client_credentials scope the client was not granted.
        if (ctx.oidc.params.grant_type === 'client_credentials') {
          const allowed = new Set((client.scope || '').split(' '));
          const asked = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
          const refused = asked.filter((s) => !allowed.has(s));
          if (refused.length) throw new errors.InvalidScope('requested scope is not allowed for this client', refused.join(' '));
        }
        return { scope: RESOURCE_SCOPES, audience: AUDIENCE, accessTokenTTL: ttlFor(client.clientId), accessTokenFormat: 'opaque' };
      },
    },
  },
});
provider.on('grant.success', countTokenRequest);
provider.on('grant.error', countTokenRequest);

// Logs in `user-1` and grants whatever was asked, with no page at all.
async function autoApprove(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: 'user-1' } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

// Drives /auth like a browser would (cookies, redirects) until the redirect
// to the client's redirect_uri, and returns the code.
async function authorizationCode(query) {
  const params = new URLSearchParams(query);
  params.set('response_type', 'code');
  if (!params.get('state')) params.set('state', 'interop');
  const jar = new Map();
  let url = `${issuer}/auth?${params}`;
  for (let hop = 0; hop < 12; hop += 1) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const set of res.headers.getSetCookie()) {
      const [pair] = set.split(';');
      const at = pair.indexOf('=');
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    const location = res.headers.get('location');
    if (!location) throw new Error(`authorization flow stopped at ${url}: HTTP ${res.status} ${await res.text()}`);
    const next = new URL(location, url);
    if (next.href.startsWith(params.get('redirect_uri'))) {
      const code = next.searchParams.get('code');
      if (!code) throw new Error(`no code in redirect: ${next.search}`);
      return code;
    }
    url = next.href;
  }
  throw new Error('too many redirects in the authorization flow');
}

function revokeClient(clientId) {
  let removed = 0;
  for (const [key, value] of store) {
    if (value.clientId === clientId && /^(AccessToken|RefreshToken|Grant|AuthorizationCode|ClientCredentials):/.test(key)) {
      store.delete(key);
      removed += 1;
    }
  }
  return removed;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (req.method === 'GET' && url.pathname === '/test/stats') return json(res, 200, stats);
    if (req.method === 'POST' && url.pathname === '/test/reset') {
      stats = { token_requests: {}, token_requests_by_grant: {} };
      return json(res, 200, {});
    }
    if (req.method === 'GET' && url.pathname === '/test/code') {
      return json(res, 200, { code: await authorizationCode(url.searchParams) });
    }
    if (req.method === 'POST' && url.pathname === '/test/revoke-grants') {
      return json(res, 200, { removed: revokeClient(url.searchParams.get('client_id')) });
    }
    if (url.pathname.startsWith('/interaction/')) return await autoApprove(req, res);
  } catch (err) {
    process.stderr.write(`interop server: ${err.stack || err}\n`);
    return json(res, 500, { error: 'test_helper_failed', error_description: String(err.message || err) });
  }
  return callback(req, res);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
process.stdout.write(`READY ${port}\n`);
