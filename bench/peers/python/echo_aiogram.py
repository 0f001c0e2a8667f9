"""aiogram's peer of actorbot in bench/compare.sh: an echo bot on aiogram 3's
dispatcher, long polling with handle_as_tasks (each update handled in a
task of its own, as the seed bots ran), no persistence. It answers every
message with its text; the benchmark measures its replies per second in a
burst, its update-to-reply latency under an open loop, its resident memory
and its time from exec to the first getUpdates.

BOT_TOKEN is the token, TELEGRAM_API_URL the Bot API's base URL (the fake
Telegram of the load-test tool).
"""

import asyncio
import os

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message

dispatcher = Dispatcher()


@dispatcher.message()
async def echo(message: Message) -> None:
    await message.answer(message.text or "(no text)")


async def main() -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
    bot = Bot(os.environ["BOT_TOKEN"], session=session)
    await dispatcher.start_polling(bot, handle_as_tasks=True, handle_signals=True)


if __name__ == "__main__":
    asyncio.run(main())
