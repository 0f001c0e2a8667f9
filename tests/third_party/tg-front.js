// telegram-test-api 4.2.1 (npm) behind a thin front that adds only the Bot
// API methods the package lacks and actorbot calls. Every other request,
// the bot's and the simulated user's alike, goes to the package's own
// routes untouched, quirks included: getMe without `is_bot`, getUpdates
// that answers at once and ignores `offset`, sendMessage echoing the
// request with `date` in milliseconds, editMessageText answering
// `result: null`, unknown methods answering HTTP 500 `{"message": ...}`.
//
// usage: NODE_PATH=.../node_modules node tg-front.js PORT
'use strict';
const http = require('http');
const path = require('path');
const TelegramServer = require('telegram-test-api');
// The express the package itself runs on.
const express = require(require.resolve('express', {
  paths: [path.dirname(require.resolve('telegram-test-api'))],
}));

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node tg-front.js PORT');
  process.exit(2);
}
// Messages are kept for the whole run (the package's clean-up timer is
// only started by its own start(), which is not used here).
const tg = new TelegramServer({ port, host: '127.0.0.1' });
const files = new Map(); // file_id -> { name, mime, data }
let fileSeq = 1;

const app = express();
app.use((req, _res, next) => {
  const m = /^\/bot[^/]+\/([^/?]+)/.exec(req.url);
  if (m) console.error(`${new Date().toISOString()} ${req.method} bot method ${m[1]}`);
  next();
});

// Not in the package: answered as Telegram would.
for (const method of ['sendChatAction', 'setMyCommands']) {
  app.post(`/bot:token/${method}`, (_req, res) => res.json({ ok: true, result: true }));
}
// Not in the package, and unknown to Telegram servers older than Bot API
// 9.3: the answer such a server gives.
app.post('/bot:token/sendMessageDraft', (_req, res) => res
  .status(404)
  .json({ ok: false, error_code: 404, description: 'Not Found: method not found' }));

// sendDocument: the upload is kept, and the message is added to the
// package's store the way its sendMessage adds one, so the user side sees
// it in /getUpdates and /getUpdatesHistory.
app.post('/bot:token/sendDocument', rawBody, (req, res) => {
  const form = parseMultipart(req);
  const doc = form && form.document;
  if (!doc || typeof doc !== 'object' || !form.chat_id) {
    return res.status(400).json({
      ok: false, error_code: 400, description: 'Bad Request: chat_id and a document file are required',
    });
  }
  const fileId = `doc${fileSeq++}`;
  files.set(fileId, doc);
  const document = {
    file_id: fileId,
    file_unique_id: `u${fileId}`,
    file_name: doc.name,
    mime_type: doc.mime,
    file_size: doc.data.length,
  };
  const fields = { ...form, document };
  const result = tg.addBotMessage(fields, req.params.token);
  return res.json({ ok: true, result });
});

app.post('/bot:token/getFile', express.json(), express.urlencoded({ extended: true }), (req, res) => {
  const fileId = (req.body || {}).file_id;
  const file = files.get(fileId);
  if (!file) {
    return res.status(400).json({ ok: false, error_code: 400, description: 'Bad Request: invalid file_id' });
  }
  return res.json({
    ok: true,
    result: {
      file_id: fileId, file_unique_id: `u${fileId}`, file_size: file.data.length, file_path: `documents/${fileId}`,
    },
  });
});
app.get('/file/bot:token/documents/:fileId', (req, res) => {
  const file = files.get(req.params.fileId);
  if (!file) return res.sendStatus(404);
  return res.type(file.mime || 'application/octet-stream').send(file.data);
});

// Everything else: the package.
app.use(tg.webServer);

function rawBody(req, _res, next) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => { req.rawBody = Buffer.concat(chunks); next(); });
  req.on('error', next);
}

// multipart/form-data: text fields as strings, file parts as
// { name, mime, data }.
function parseMultipart(req) {
  const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(req.headers['content-type'] || '');
  if (!m) return null;
  const delimiter = Buffer.from(`--${m[1] || m[2]}`);
  const body = req.rawBody;
  const out = {};
  let at = body.indexOf(delimiter);
  while (at >= 0) {
    const start = at + delimiter.length;
    if (body.subarray(start, start + 2).toString() === '--') break;
    const next = body.indexOf(delimiter, start);
    if (next < 0) break;
    const part = body.subarray(start + 2, next - 2); // past CRLF, before CRLF
    const split = part.indexOf('\r\n\r\n');
    if (split >= 0) {
      const head = part.subarray(0, split).toString();
      const data = part.subarray(split + 4);
      const name = /name="([^"]*)"/i.exec(head);
      const filename = /filename="([^"]*)"/i.exec(head);
      const type = /content-type:\s*([^\r\n;]+)/i.exec(head);
      if (name) {
        out[name[1]] = filename
          ? { name: filename[1], mime: type ? type[1].trim() : undefined, data: Buffer.from(data) }
          : data.toString();
      }
    }
    at = next;
  }
  return out;
}

const server = http.createServer(app);
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
